//! `cairn exec`, `cairn ps` and `cairn kill` end to end, as root, as a plain user with
//! subordinate ids and as one without.
//!
//! Most tests run a small busybox `sh` probe inside the container that prints `key=value`
//! lines about what it sees (its id maps, namespaces, capabilities, mounts …); the test then
//! compares them with the host's view, read by the test itself or by `Who::command`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{cairn_bin_for, fixtures, Cairn, TestUser, Who};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longer than any run here should take: a run still going after this has hung.
const HUNG: Duration = Duration::from_secs(60);

/// Docker's 14 default capabilities as the kernel prints them in `/proc/PID/status`.
const DOCKER_CAPS: &str = "00000000a80425fb";
/// The same without CAP_MKNOD (bit 27).
const DOCKER_CAPS_WITHOUT_MKNOD: &str = "00000000a00425fb";

fn busybox() -> String {
    fixtures().image("busybox:latest")
}

/// A fresh store for `who` with busybox pulled.
fn setup(who: Who) -> (Cairn, String) {
    let cairn = Cairn::new(who);
    let image = busybox();
    cairn.pull(&image);
    (cairn, image)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Waits for `child` (stdout and stderr piped), feeding it `input`; SIGKILLs it and fails the
/// test if it runs longer than `limit`.
fn finish(mut child: Child, input: Option<Vec<u8>>, limit: Duration, what: &str) -> Output {
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin piped");
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for cairn"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let out = rx.recv_timeout(Duration::from_secs(10));
            let shown = match &out {
                Ok(Ok(o)) => describe(o),
                _ => "(no output)".into(),
            };
            panic!("{what}: still running after {limit:?}, killed:\n{shown}")
        }
    }
}

/// Runs `command` to the end (with `input` on stdin when given).
fn run_limited(mut command: Command, input: Option<&[u8]>, what: &str) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let child = command.spawn().expect("spawn");
    finish(child, input.map(<[u8]>::to_vec), HUNG, what)
}

/// `cairn exec ARGS…`.
fn exec(cairn: &Cairn, args: &[&str]) -> Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    run_limited(
        cairn.command(&all),
        None,
        &format!("cairn {all:?} as {}", cairn.who.label()),
    )
}

/// `cairn exec ARGS…` that must succeed.
fn exec_ok(cairn: &Cairn, args: &[&str]) -> Output {
    let out = exec(cairn, args);
    assert!(
        out.status.success(),
        "cairn exec {args:?} as {}: {}",
        cairn.who.label(),
        describe(&out)
    );
    out
}

/// What a probe script printed: its `key=value` lines.
struct Probe {
    values: BTreeMap<String, String>,
    out: Output,
    who: String,
}

impl Probe {
    fn get(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "probe as {} printed no {key}=: {}",
                self.who,
                describe(&self.out)
            )
        })
    }

    /// Asserts `key` is `expected`, showing the whole probe output when not.
    fn expect(&self, key: &str, expected: &str) {
        assert_eq!(
            self.get(key),
            expected,
            "{key} as {}: {}",
            self.who,
            describe(&self.out)
        );
    }
}

/// Runs `sh -c SCRIPT` in `image` with `options` before the image; the run must succeed.
fn probe(cairn: &Cairn, options: &[&str], image: &str, script: &str) -> Probe {
    let mut args: Vec<&str> = options.to_vec();
    args.extend_from_slice(&[image, "sh", "-c", script]);
    let out = exec_ok(cairn, &args);
    let values = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Probe {
        values,
        out,
        who: cairn.who.label(),
    }
}

/// The user's range in `/etc/subuid` or `/etc/subgid`: (start, count).
fn subordinate_range(file: &str, user: &TestUser) -> (u32, u32) {
    let text = fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{}:", user.name)))
        .unwrap_or_else(|| panic!("{} has no range in {file}", user.name));
    let parts: Vec<&str> = line.split(':').collect();
    (parts[1].parse().unwrap(), parts[2].parse().unwrap())
}

/// An id map as the kernel prints it, one `inside outside count` triple per line.
fn id_map(text: &str) -> Vec<[u64; 3]> {
    text.split(';')
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let n: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            [n[0], n[1], n[2]]
        })
        .collect()
}

/// Waits until the container of `child` (started by [`spawn_ready`]) has printed `ready`, then
/// until `cairn ps` lists it, and returns its JSON record. Fails with cairn's stderr if the
/// run ends first.
///
/// The test waits for `ready` before running `cairn ps` so that these tests check what they
/// are about; `cairn ps` during the start of a run is `ps_while_exec_starts`' business.
fn wait_for_container(cairn: &Cairn, child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut reader, &mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let ended = |child: &mut Child, what: String| -> ! {
        let _ = child.kill();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        panic!(
            "cairn exec as {}: {what} ({status}):\n{stderr}",
            cairn.who.label()
        )
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line == "ready\n" => {}
        Ok(line) => ended(child, format!("the container printed {line:?}, not ready")),
        Err(_) => ended(child, "the container never printed ready".into()),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            ended(
                child,
                format!("ended ({status}) before ps showed its container"),
            );
        }
        let listed = cairn.ok(&["ps", "--format", "json"]);
        let records: Vec<serde_json::Value> = listed
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        match records.len() {
            0 => {}
            1 => return records.into_iter().next().unwrap(),
            _ => panic!("expected one container, ps shows:\n{listed}"),
        }
        assert!(
            Instant::now() < deadline,
            "ps never showed the container as {}",
            cairn.who.label()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `cairn exec` in the background, with its output piped.
fn spawn_exec(cairn: &Cairn, args: &[&str]) -> Child {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    let mut command = cairn.command(&all);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.spawn().expect("spawn cairn exec")
}

/// The shell script a long run executes: `setup`, then `ready` on stdout, then a minute of
/// sleep as the command itself (sh execs it).
fn ready_then_sleep(setup: &str) -> String {
    format!("{setup}echo ready; exec sleep 60")
}

/// Whether process `pid` is gone (or a zombie, which runs nothing and holds nothing).
fn process_gone(pid: i64) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_gone(pids: &[i64], limit: Duration) -> Vec<i64> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i64> = pids.iter().copied().filter(|p| !process_gone(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every descendant of `pid` (through `/proc/PID/task/*/children`).
fn descendants(pid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for task in fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
        {
            let children = fs::read_to_string(task.unwrap().path().join("children"));
            for c in children.unwrap_or_default().split_whitespace() {
                let c: i64 = c.parse().unwrap();
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

fn dir_entries(path: &Path) -> Vec<String> {
    match fs::read_dir(path) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// One SQL answer from the store's metadata database, read as the store's owner.
fn sql(cairn: &Cairn, query: &str) -> String {
    let out = cairn
        .who
        .command("sqlite3")
        .arg(cairn.root.join("metadata.db"))
        .arg(query)
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "sqlite3 {query}: {}", describe(&out));
    text(&out.stdout).trim().to_owned()
}

/// No trace of any container: no record, no runtime state, no writable layer.
fn assert_no_container_state(cairn: &Cairn, when: &str) {
    for dir in ["containers", "run"] {
        // Hidden entries are caches (run/.seccomp); container state is named by the id.
        let mut left = dir_entries(&cairn.root.join(dir));
        left.retain(|name| !name.starts_with('.'));
        assert!(
            left.is_empty(),
            "{when} as {}: {dir}/ still holds {left:?}",
            cairn.who.label()
        );
    }
    assert_eq!(
        sql(
            cairn,
            "SELECT count(*) FROM snapshots WHERE name LIKE 'container-%'"
        ),
        "0",
        "{when} as {}: a container snapshot is left",
        cairn.who.label()
    );
    let rows: usize = sql(cairn, "SELECT count(*) FROM snapshots")
        .parse()
        .unwrap();
    let dirs = dir_entries(&cairn.root.join("snapshots"));
    assert_eq!(
        dirs.len(),
        rows,
        "{when} as {}: snapshot directories {dirs:?} for {rows} snapshots",
        cairn.who.label()
    );
}

fn is_container_id(s: &str) -> bool {
    s.len() == 12
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

fn exit_code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("cairn died of a signal: {}", describe(out)))
}

fn one_line(err: &[u8]) -> String {
    let err = text(err);
    assert_eq!(
        err.trim().lines().count(),
        1,
        "expected one line on stderr, got:\n{err}"
    );
    err.trim().to_owned()
}

cairn_e2e::identity_tests!(
    [root, subids, nosubids]
    uid_and_gid_mapping,
    other_user_needs_subordinate_ids,
    namespaces,
    capabilities,
    seccomp_and_no_new_privileges,
    masked_and_readonly_paths_and_minimal_dev,
    env_workdir_and_image_defaults,
    image_config_defaults,
    volumes_and_tmpfs,
    writes_do_not_reach_the_image,
    network_none_has_only_loopback,
    exit_codes,
    stdout_and_stderr_are_separate,
    stdin_only_with_interactive,
    terminal,
    timeout_stops_the_container,
    zombies_are_reaped,
    sigterm_to_cairn_stops_the_container,
    ctrl_c_to_the_process_group_stops_the_container,
    ps_lists_and_kill_stops,
    ps_while_exec_starts,
    kill_9_of_cairn_leaves_nothing_running,
);

// 1. Identities.

fn uid_and_gid_mapping(who: Who) {
    let (cairn, image) = setup(who);
    let p = probe(
        &cairn,
        &[],
        &image,
        r#"
        echo uid_map=$(cat /proc/self/uid_map | tr '\n' ';')
        echo gid_map=$(cat /proc/self/gid_map | tr '\n' ';')
        echo uid=$(id -u)
        echo gid=$(id -g)
        echo busybox_owner=$(stat -c %u:%g /bin/busybox)
        echo etc_owner=$(stat -c %u:%g /etc)
        "#,
    );
    let (uids, gids) = (id_map(p.get("uid_map")), id_map(p.get("gid_map")));
    match who {
        Who::Root => {
            assert_eq!(uids, vec![[0, 0, 4294967295]], "uid_map as root");
            assert_eq!(gids, vec![[0, 0, 4294967295]], "gid_map as root");
        }
        Who::User(user) if user.subids => {
            let (su, cu) = subordinate_range("/etc/subuid", user);
            let (sg, cg) = subordinate_range("/etc/subgid", user);
            assert_eq!(
                uids,
                vec![[0, user.uid.into(), 1], [1, su.into(), cu.into()]],
                "uid_map as {}",
                user.name
            );
            assert_eq!(
                gids,
                vec![[0, user.gid.into(), 1], [1, sg.into(), cg.into()]],
                "gid_map as {}",
                user.name
            );
        }
        Who::User(user) => {
            assert_eq!(
                uids,
                vec![[0, user.uid.into(), 1]],
                "uid_map as {}",
                user.name
            );
            assert_eq!(
                gids,
                vec![[0, user.gid.into(), 1]],
                "gid_map as {}",
                user.name
            );
        }
    }
    p.expect("uid", "0");
    p.expect("gid", "0");
    p.expect("busybox_owner", "0:0");
    p.expect("etc_owner", "0:0");
}

fn other_user_needs_subordinate_ids(who: Who) {
    let (cairn, image) = setup(who);
    let args = [
        "-u",
        "1000:1000",
        &image,
        "sh",
        "-c",
        "echo uid=$(id -u) gid=$(id -g); touch /tmp/mine; echo tmp_owner=$(stat -c %u:%g /tmp/mine)",
    ];
    match who {
        Who::User(user) if !user.subids => {
            let out = exec(&cairn, &args);
            assert_eq!(exit_code(&out), 125, "{}", describe(&out));
            let line = one_line(&out.stderr);
            assert!(
                line.contains("1000:1000") && line.contains("subordinate"),
                "{line}"
            );
            assert!(out.stdout.is_empty(), "{}", describe(&out));
        }
        _ => {
            let out = exec_ok(&cairn, &args);
            assert_eq!(
                text(&out.stdout),
                "uid=1000 gid=1000\ntmp_owner=1000:1000\n",
                "{}",
                describe(&out)
            );
        }
    }
}

// 2. Namespaces.

/// The namespace `kind` of a process `who` runs on the host.
fn host_namespace(who: Who, kind: &str) -> String {
    let out = who
        .command("readlink")
        .arg(format!("/proc/self/ns/{kind}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "readlink as {}", who.label());
    text(&out.stdout).trim().to_owned()
}

fn namespaces(who: Who) {
    let (cairn, image) = setup(who);
    let p = probe(
        &cairn,
        &[],
        &image,
        r#"
        echo pid1=$(tr '\0' ' ' < /proc/1/cmdline)
        echo pid1_fds=$(ls /proc/1/fd 2>&1 | sort -n | tr '\n' ' ')
        echo self=$$
        echo ppid=$(awk '/^PPid:/ {print $2}' /proc/$$/status)
        for n in pid mnt ipc uts net user cgroup; do echo ns_$n=$(readlink /proc/self/ns/$n); done
        echo hostname=$(hostname)
        echo env_hostname=$HOSTNAME
        echo processes=$(ps -o pid | tail -n +2 | tr '\n' ' ')
        "#,
    );
    // pid 1 is cairn's init, a clone of the runtime helper, whose command line names
    // neither the store nor the engine's own arguments.
    assert_eq!(
        p.get("pid1").trim(),
        "cairn-runtime-helper",
        "pid 1 is not cairn's init, or shows more than its name"
    );
    // Nothing of the helper it was cloned from stays open in it: not the helper's socket,
    // not other containers' pidfds, not a handle on the host's /proc. (In a user namespace
    // the command may not even list pid 1's descriptors: pid 1 is not dumpable.)
    let fds = p.get("pid1_fds").trim();
    match who {
        Who::Root => assert_eq!(fds, "0 1 2", "pid 1 holds descriptors besides stdio"),
        Who::User(_) => assert!(
            fds == "0 1 2" || fds.contains("Permission denied"),
            "pid 1 holds descriptors besides stdio: {fds}"
        ),
    }
    p.expect("self", "2");
    p.expect("ppid", "1");
    for kind in ["pid", "mnt", "ipc", "uts", "cgroup"] {
        let host = host_namespace(who, kind);
        assert_ne!(
            p.get(&format!("ns_{kind}")),
            host,
            "{kind} namespace shared with the host as {}",
            who.label()
        );
    }
    // Host network by default.
    p.expect("ns_net", &host_namespace(who, "net"));
    let user_ns = host_namespace(who, "user");
    match who {
        Who::Root => p.expect("ns_user", &user_ns),
        Who::User(_) => assert_ne!(
            p.get("ns_user"),
            user_ns,
            "rootless without a user namespace"
        ),
    }
    let hostname = p.get("hostname");
    assert!(is_container_id(hostname), "hostname {hostname:?}");
    p.expect("env_hostname", hostname);
    // Only init, sh and the pipeline that lists them: no host process is visible.
    let visible: Vec<u32> = p
        .get("processes")
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        visible.len() <= 6 && visible.contains(&1) && visible.contains(&2),
        "processes seen in the container: {visible:?}"
    );
}

// 3. Capabilities.

const STATUS_LINES: &str = r#"grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '='"#;

fn capabilities(who: Who) {
    let (cairn, image) = setup(who);
    let p = probe(&cairn, &[], &image, STATUS_LINES);
    // Root containers without a devices cgroup (no limits asked for) lose CAP_MKNOD, the one
    // capability that could make a host device node; in a user namespace it is harmless.
    let expected = if matches!(who, Who::Root) {
        DOCKER_CAPS_WITHOUT_MKNOD
    } else {
        DOCKER_CAPS
    };
    p.expect("CapBnd", expected);
    p.expect("CapEff", expected);
    p.expect("CapPrm", expected);
    p.expect("CapInh", "0000000000000000");
    p.expect("CapAmb", "0000000000000000");
    if let Who::User(u) = who {
        if !u.subids {
            return; // uid 1000 does not exist there (other_user_needs_subordinate_ids)
        }
    }
    // Docker 20.10+: a non-root user keeps the bounding set but has nothing effective.
    let p = probe(&cairn, &["-u", "1000:1000"], &image, STATUS_LINES);
    p.expect("CapBnd", expected);
    p.expect("CapEff", "0000000000000000");
    p.expect("CapPrm", "0000000000000000");
}

/// A root container cannot reach a host block device: without limits it has no CAP_MKNOD;
/// with limits (the host's devices cgroup) it may make the node but not open it.
#[test]
fn root_containers_cannot_open_host_devices() {
    let (cairn, image) = setup(Who::Root);
    let script = "mknod /tmp/disk b 8 0 2>/dev/null; echo mknod=$?; \
                  head -c 1 /tmp/disk >/dev/null 2>&1; echo open=$?";
    let p = probe(&cairn, &[], &image, script);
    assert_ne!(p.get("mknod"), "0", "mknod of a block device worked");
    let p = probe(&cairn, &["--memory", "256m"], &image, script);
    assert_ne!(p.get("open"), "0", "a host block device could be opened");
}

// 4. seccomp.

fn seccomp_and_no_new_privileges(who: Who) {
    let (cairn, image) = setup(who);
    // Without seccomp an unprivileged process may make a user namespace here: check that the
    // host allows it, so the refusal inside is the profile's doing.
    let host = who
        .command("unshare")
        .args(["-U", "true"])
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "unshare -U fails on the host as {}: {}",
        who.label(),
        describe(&host)
    );
    let p = probe(
        &cairn,
        &[],
        &image,
        &format!(
            r#"
            {STATUS_LINES}
            echo unshare_err=$(unshare -U true 2>&1)
            unshare -U true 2>/dev/null; echo unshare=$?
            mkdir -p /mnt/t; mount -t tmpfs none /mnt/t 2>/dev/null; echo mount=$?
            "#
        ),
    );
    p.expect("Seccomp", "2");
    p.expect("NoNewPrivs", "1");
    assert_ne!(
        p.get("unshare"),
        "0",
        "unshare -U succeeded in the container"
    );
    assert!(
        p.get("unshare_err").contains("Operation not permitted"),
        "{}",
        p.get("unshare_err")
    );
    assert_ne!(p.get("mount"), "0", "mount succeeded in the container");
}

// 5. Masked and read-only paths, /dev.

fn masked_and_readonly_paths_and_minimal_dev(who: Who) {
    let (cairn, image) = setup(who);
    for file in ["/proc/timer_list", "/proc/interrupts"] {
        assert!(
            !fs::read(file).unwrap().is_empty(),
            "{file} is empty on the host: the masking check below would prove nothing"
        );
    }
    let p = probe(
        &cairn,
        &[],
        &image,
        r#"
        echo dev=$(ls -A /dev | sort | tr '\n' ' ')
        echo pts=$(ls -A /dev/pts | tr '\n' ' ')
        echo block_devices=$(find /dev -type b | wc -l)
        for f in timer_list interrupts; do
            echo ${f}_type=$(stat -c %F /proc/$f)
            echo ${f}_bytes=$(wc -c < /proc/$f)
        done
        if [ -e /proc/kcore ]; then echo kcore=$(stat -c %F /proc/kcore) $(wc -c < /proc/kcore); else echo kcore=absent; fi
        echo firmware=$(ls -A /sys/firmware | wc -l)
        echo domainname=$( (echo x > /proc/sys/kernel/domainname) 2>&1)
        echo ostype=$( (echo x > /proc/sys/kernel/ostype) 2>&1)
        echo sys=$( (touch /sys/cairn-probe) 2>&1)
        echo proc_sys_mount=$(awk '$2 == "/proc/sys" {print $4}' /proc/mounts | cut -d, -f1)
        "#,
    );
    let dev: BTreeSet<&str> = p.get("dev").split_whitespace().collect();
    let allowed: BTreeSet<&str> = [
        "console", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
        "stdin", "stdout", "tty", "urandom", "zero",
    ]
    .into();
    let extra: Vec<_> = dev.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "unexpected /dev entries {extra:?} in {dev:?}"
    );
    for needed in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
    ] {
        assert!(dev.contains(needed), "/dev/{needed} missing: {dev:?}");
    }
    p.expect("pts", "ptmx");
    p.expect("block_devices", "0");
    for f in ["timer_list", "interrupts"] {
        p.expect(&format!("{f}_type"), "character special file");
        p.expect(&format!("{f}_bytes"), "0");
    }
    if Path::new("/proc/kcore").exists() {
        p.expect("kcore", "character special file 0");
    } else {
        assert!(
            ["absent", "character special file 0"].contains(&p.get("kcore")),
            "/proc/kcore: {}",
            p.get("kcore")
        );
    }
    p.expect("firmware", "0");
    p.expect("proc_sys_mount", "ro");
    for key in ["domainname", "ostype", "sys"] {
        assert!(
            p.get(key).contains("Read-only file system"),
            "{key}: {}",
            p.get(key)
        );
    }
}

// 6. Environment, working directory, user.

fn env_workdir_and_image_defaults(who: Who) {
    let (cairn, image) = setup(who);
    let env_file = cairn.dir("env.list");
    fs::write(
        &env_file,
        "# a comment\n\nA=from-file\nC=from file\nD=x=y\n",
    )
    .unwrap();
    who.own(&env_file);
    let p = probe(
        &cairn,
        &[
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "A=1",
            "-e",
            "B=two",
            "-w",
            "/tmp/newdir",
        ],
        &image,
        r#"
        echo A=$A
        echo B=$B
        echo C=$C
        echo D=$D
        echo pwd=$(pwd)
        echo workdir_type=$(stat -c %F /tmp/newdir)
        echo PATH=$PATH
        echo HOME=$HOME
        echo HOSTNAME=$HOSTNAME
        echo hostname=$(hostname)
        echo TERM=${TERM-unset}
        "#,
    );
    p.expect("A", "1");
    p.expect("B", "two");
    p.expect("C", "from file");
    p.expect("D", "x=y");
    p.expect("pwd", "/tmp/newdir");
    p.expect("workdir_type", "directory");
    p.expect(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    p.expect("HOME", "/root");
    p.expect("HOSTNAME", p.get("hostname"));
    p.expect("TERM", "unset");
    // Without -w: the image's working directory, here none, so /.
    let p = probe(&cairn, &[], &image, "echo pwd=$(pwd)");
    p.expect("pwd", "/");
}

/// busybox:config sets User builder (1000), WorkingDir, Env, Entrypoint and Cmd.
fn image_config_defaults(who: Who) {
    let cairn = Cairn::new(who);
    let image = fixtures().image("busybox:config");
    cairn.pull(&image);
    let out = exec(&cairn, &[&image]);
    match who {
        Who::User(u) if !u.subids => {
            // The image's user does not exist in a store without subordinate ids.
            assert_eq!(exit_code(&out), 125, "{}", describe(&out));
            assert!(one_line(&out.stderr).contains("subordinate"));
        }
        _ => {
            assert!(out.status.success(), "{}", describe(&out));
            assert_eq!(
                text(&out.stdout),
                "FOO=bar uid=1000 gid=1000 pwd=/home/builder\n",
                "{}",
                describe(&out)
            );
            // Arguments replace Cmd, not Entrypoint (`/bin/sh -c`); -u and -e override.
            let out = exec_ok(
                &cairn,
                &[
                    "-u",
                    "0",
                    "-e",
                    "FOO=baz",
                    &image,
                    "echo FOO=$FOO uid=$(id -u) EMPTY=[$EMPTY] W=$WITH_EQUALS",
                ],
            );
            assert_eq!(text(&out.stdout), "FOO=baz uid=0 EMPTY=[] W=a=b\n");
        }
    }
}

// 7. Volumes and tmpfs.

fn volumes_and_tmpfs(who: Who) {
    let (cairn, image) = setup(who);
    let vol = cairn.dir("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("in.txt"), "from the host\n").unwrap();
    who.own(&vol);
    let bind = format!("{}:/data", vol.display());
    let bind_ro = format!("{}:/ro:ro", vol.display());
    let p = probe(
        &cairn,
        &["-v", &bind, "-v", &bind_ro, "--tmpfs", "/scratch"],
        &image,
        r#"
        echo in=$(cat /data/in.txt)
        echo from the container > /data/out.txt; echo write=$?
        echo ro_write=$( (echo x > /ro/x) 2>&1)
        echo ro_in=$(cat /ro/in.txt)
        echo ro_sees_out=$(cat /ro/out.txt)
        echo scratch=$(awk '$2 == "/scratch" {print $1, $3}' /proc/mounts)
        echo x > /scratch/f && echo scratch_write=$(cat /scratch/f)
        echo data_mount=$(awk '$2 == "/data" {print $4}' /proc/mounts | cut -d, -f1)
        "#,
    );
    p.expect("in", "from the host");
    p.expect("write", "0");
    p.expect("ro_in", "from the host");
    p.expect("ro_sees_out", "from the container");
    assert!(
        p.get("ro_write").contains("Read-only file system"),
        "{}",
        describe(&p.out)
    );
    p.expect("scratch", "tmpfs tmpfs");
    p.expect("scratch_write", "x");
    p.expect("data_mount", "rw");
    assert!(!vol.join("x").exists(), "the read-only bind took a write");
    let written = vol.join("out.txt");
    assert_eq!(
        fs::read_to_string(&written).unwrap(),
        "from the container\n"
    );
    let meta = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&written).unwrap());
    let expected = match who {
        Who::Root => 0,
        Who::User(u) => u.uid,
    };
    assert_eq!(
        meta, expected,
        "owner on the host of a file the container wrote"
    );
    // The tmpfs was the container's: a second container starts with an empty one.
    let p = probe(
        &cairn,
        &["--tmpfs", "/scratch"],
        &image,
        "echo n=$(ls -A /scratch | wc -l)",
    );
    p.expect("n", "0");

    let missing = cairn.dir("no-such-dir");
    let out = exec(
        &cairn,
        &[
            "-v",
            &format!("{}:/data", missing.display()),
            &image,
            "true",
        ],
    );
    assert_eq!(exit_code(&out), 125, "{}", describe(&out));
    assert!(
        one_line(&out.stderr).contains(missing.to_str().unwrap()),
        "{}",
        describe(&out)
    );
}

// 8. The container's writes stay in the container.

fn writes_do_not_reach_the_image(who: Who) {
    let (cairn, image) = setup(who);
    let p = probe(
        &cairn,
        &[],
        &image,
        "echo new > /etc/newfile && rm /bin/ls && echo ls=$(ls /bin/ls 2>&1) && echo new=$(cat /etc/newfile)",
    );
    p.expect("new", "new");
    assert!(p.get("ls").contains("No such file"), "{}", p.get("ls"));
    let p = probe(
        &cairn,
        &[],
        &image,
        "echo ls=$(ls /bin/ls); echo newfile=$([ -e /etc/newfile ] && echo present || echo absent)",
    );
    p.expect("ls", "/bin/ls");
    p.expect("newfile", "absent");
    let dest = cairn.dir("export");
    cairn.ok(&["export", &image, dest.to_str().unwrap()]);
    assert!(
        !dest.join("etc/newfile").exists(),
        "/etc/newfile reached the image"
    );
    assert!(
        dest.join("bin/ls").symlink_metadata().is_ok(),
        "/bin/ls gone from the image"
    );
    assert_no_container_state(&cairn, "after two runs");
}

// 9. Networks.

/// Interface names in a `/proc/net/dev`.
fn interfaces(net_dev: &str) -> BTreeSet<String> {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

fn network_none_has_only_loopback(who: Who) {
    let (cairn, image) = setup(who);
    let script = r#"
        echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')
        echo lo_flags=$(ip -o link show lo | cut -d'<' -f2 | cut -d'>' -f1)
        echo links=$(ip -o link | wc -l)
        echo net=$(readlink /proc/self/ns/net)
        echo ping=$(ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1 && echo ok || echo failed)
        "#;
    let p = probe(&cairn, &["--network", "none"], &image, script);
    p.expect("ifaces", "lo");
    p.expect("links", "1");
    let flags: Vec<&str> = p.get("lo_flags").split(',').collect();
    assert!(flags.contains(&"UP"), "lo is not up: {flags:?}");
    assert_ne!(p.get("net"), host_namespace(who, "net"));
    // Loopback answers (CAP_NET_RAW is among the defaults, and the namespace is the
    // container's own).
    p.expect("ping", "ok");

    let host = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    assert!(
        host.len() > 1,
        "the host has only {host:?}: nothing to compare"
    );
    let p = probe(&cairn, &[], &image, script);
    let seen: BTreeSet<String> = p
        .get("ifaces")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(seen, host, "host network as {}", who.label());
    p.expect("net", &host_namespace(who, "net"));
}

// 10. Exit codes.

fn exit_codes(who: Who) {
    let (cairn, image) = setup(who);
    for (script, code) in [
        ("exit 7", 7),
        ("exit 0", 0),
        ("kill -TERM $$", 143),
        ("kill -KILL $$", 137),
        ("kill -INT $$", 130),
    ] {
        let out = exec(&cairn, &[&image, "sh", "-c", script]);
        assert_eq!(exit_code(&out), code, "{script}: {}", describe(&out));
        assert!(out.stderr.is_empty(), "{script}: {}", describe(&out));
    }
    let out = exec(&cairn, &[&image, "no-such-command", "arg"]);
    assert_eq!(exit_code(&out), 127, "{}", describe(&out));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("no-such-command") && line.contains("not found"),
        "{line}"
    );
    let out = exec(&cairn, &[&image, "/etc/passwd"]);
    assert_eq!(exit_code(&out), 126, "{}", describe(&out));
    assert!(one_line(&out.stderr).contains("/etc/passwd"));

    let unknown = fixtures().image("no-such-image:latest");
    let out = exec(&cairn, &[&unknown, "true"]);
    assert_eq!(exit_code(&out), 125, "{}", describe(&out));
    let line = one_line(&out.stderr);
    assert!(line.contains("no-such-image"), "{line}");
    assert!(out.stdout.is_empty());
    assert_no_container_state(&cairn, "after failed runs");
}

// 11. stdout and stderr.

fn stdout_and_stderr_are_separate(who: Who) {
    let (cairn, image) = setup(who);
    let out = exec_ok(
        &cairn,
        &[
            &image,
            "sh",
            "-c",
            "echo out; echo err >&2; echo out2; echo err2 >&2",
        ],
    );
    assert_eq!(text(&out.stdout), "out\nout2\n", "{}", describe(&out));
    assert_eq!(text(&out.stderr), "err\nerr2\n", "{}", describe(&out));
}

// 12. stdin.

fn stdin_only_with_interactive(who: Who) {
    let (cairn, image) = setup(who);
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = run_limited(
        cairn.command(&["exec", "-i", &image, "cat"]),
        Some(&input),
        "exec -i cat",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        out.stdout == input,
        "-i cat did not echo its input: {}",
        describe(&out)
    );

    let out = run_limited(
        cairn.command(&["exec", &image, "sh", "-c", "cat; echo status=$?"]),
        Some(b"not for the container\n"),
        "exec cat",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "status=0\n", "{}", describe(&out));
}

// 13. Terminals.

fn terminal(who: Who) {
    let (cairn, image) = setup(who);
    let out = exec_ok(
        &cairn,
        &[
            "-t",
            &image,
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo tty; echo TERM=$TERM",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "tty\r\nTERM=xterm\r\n",
        "{}",
        describe(&out)
    );

    // -t -i: input goes through the terminal (and is echoed by it).
    let out = run_limited(
        cairn.command(&[
            "exec",
            "-t",
            "-i",
            &image,
            "sh",
            "-c",
            "read x; echo got=$x",
        ]),
        Some(b"hi\n"),
        "exec -t -i",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("got=hi\r\n"),
        "{}",
        describe(&out)
    );

    // On a terminal of 40x100 the container's terminal has its size.
    let command = format!(
        "stty rows 40 cols 100; exec {} --root {} exec -t {image} sh -c 'stty size; echo stty=$?'",
        cairn_bin_for(who).display(),
        cairn.root.display()
    );
    let mut script = who.command("script");
    script
        .args(["-qefc", &command, "/dev/null"])
        .stdin(Stdio::null());
    let out = run_limited(script, None, "script exec -t");
    assert!(out.status.success(), "{}", describe(&out));
    let screen = text(&out.stdout);
    assert!(
        screen.contains("40 100\r\nstty=0\r\n"),
        "stty size in the container: {screen:?}"
    );
}

// 14. Timeouts.

fn timeout_stops_the_container(who: Who) {
    let (cairn, image) = setup(who);
    let start = Instant::now();
    let out = exec(&cairn, &["--timeout", "1s", &image, "sleep", "30"]);
    let took = start.elapsed();
    assert_eq!(exit_code(&out), 143, "{}", describe(&out));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        describe(&out)
    );

    // A command that ignores SIGTERM is killed after the stop timeout.
    let start = Instant::now();
    let out = exec(
        &cairn,
        &[
            "--timeout",
            "1s",
            "--stop-timeout",
            "1",
            &image,
            "sh",
            "-c",
            "trap '' TERM; sleep 30",
        ],
    );
    let took = start.elapsed();
    assert_eq!(exit_code(&out), 137, "{}", describe(&out));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "killed after {took:?}");
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        describe(&out)
    );
    assert_no_container_state(&cairn, "after timeouts");
}

// 15. Zombies.

fn zombies_are_reaped(who: Who) {
    let (cairn, image) = setup(who);
    let p = probe(
        &cairn,
        &[],
        &image,
        r#"
        (sleep 0.1 &)
        for i in $(seq 50); do (true &); done
        sleep 1
        echo zombies=$(ps -o stat | grep -c Z)
        echo processes=$(ps -o pid | tail -n +2 | wc -l)
        "#,
    );
    p.expect("zombies", "0");
    // init, sh and the pipeline that counts them.
    let n: u32 = p.get("processes").parse().unwrap();
    assert!(n <= 6, "{n} processes left: {}", describe(&p.out));
}

// 16. SIGTERM to cairn.

fn sigterm_to_cairn_stops_the_container(who: Who) {
    let (cairn, image) = setup(who);
    let mut child = spawn_exec(&cairn, &[&image, "sh", "-c", &ready_then_sleep("")]);
    let record = wait_for_container(&cairn, &mut child);
    let init = record["pid"].as_i64().expect("pid in ps");
    let start = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = finish(
        child,
        None,
        Duration::from_secs(20),
        "cairn exec after SIGTERM",
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    assert_eq!(exit_code(&out), 143, "{}", describe(&out));
    assert!(process_gone(init), "container init {init} still runs");
    assert_eq!(cairn.ok(&["ps", "--format", "json"]), "");
    assert_no_container_state(&cairn, "after SIGTERM");
}

/// A terminal's Ctrl-C: SIGINT to cairn's whole process group, which holds cairn's runtime
/// helper too. The helper must outlive it so that cairn can stop the container as it does
/// for SIGTERM (the command ends with SIGINT's or SIGTERM's status, never cairn's 125).
fn ctrl_c_to_the_process_group_stops_the_container(who: Who) {
    use std::os::unix::process::CommandExt;
    let (cairn, image) = setup(who);
    let mut command = cairn.command(&["exec", &image, "sh", "-c", &ready_then_sleep("")]);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().expect("spawn cairn exec");
    let record = wait_for_container(&cairn, &mut child);
    let init = record["pid"].as_i64().expect("pid in ps");
    kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGINT).unwrap();
    let out = finish(
        child,
        None,
        Duration::from_secs(20),
        "cairn exec after Ctrl-C",
    );
    assert!([130, 143].contains(&exit_code(&out)), "{}", describe(&out));
    assert!(process_gone(init), "container init {init} still runs");
    assert_eq!(cairn.ok(&["ps", "--format", "json"]), "");
    assert_no_container_state(&cairn, "after Ctrl-C");
}

// 17. ps and kill.

fn ps_lists_and_kill_stops(who: Who) {
    let (cairn, image) = setup(who);
    let vol = cairn.dir("vol");
    fs::create_dir(&vol).unwrap();
    who.own(&vol);
    let script = ready_then_sleep("hostname > /data/hostname; ");
    let mut child = spawn_exec(
        &cairn,
        &[
            "-v",
            &format!("{}:/data", vol.display()),
            &image,
            "sh",
            "-c",
            &script,
        ],
    );
    let record = wait_for_container(&cairn, &mut child);
    let id = record["id"].as_str().unwrap().to_owned();
    assert!(is_container_id(&id), "{record}");
    assert_eq!(record["image"], image.as_str(), "{record}");
    assert_eq!(
        record["command"],
        serde_json::json!(["sh", "-c", script]),
        "{record}"
    );
    let init = record["pid"].as_i64().expect("pid");
    assert!(Path::new(&format!("/proc/{init}")).exists(), "{record}");
    // The container's hostname is its id.
    assert_eq!(fs::read_to_string(vol.join("hostname")).unwrap().trim(), id);

    let table = cairn.ok(&["ps"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("CONTAINER ID"), "{table}");
    assert!(
        lines[1].starts_with(&id) && lines[1].contains(&image) && lines[1].contains("sh -c"),
        "{table}"
    );

    // A unique prefix is enough; unknown ids fail.
    let err = cairn.fails(&["kill", "ffffffffffff"]);
    assert!(err.contains("ffffffffffff"), "{err}");
    let start = Instant::now();
    assert_eq!(cairn.ok(&["kill", &id[..6]]).trim(), id);
    let out = finish(
        child,
        None,
        Duration::from_secs(20),
        "cairn exec after kill",
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(exit_code(&out), 143, "{}", describe(&out));
    assert!(process_gone(init), "container init {init} still runs");
    assert_eq!(cairn.ok(&["ps", "--format", "json"]), "");
    assert_no_container_state(&cairn, "after kill");
}

/// Regression: a command that opens the store (here `cairn ps`) while a `cairn exec` is
/// starting must leave that run alone. Store recovery took the lease file of a process that had
/// created it but not yet locked it for dead and deleted it; the next recovery then killed the
/// container (137) or removed its snapshot before it started (125, "failed to prepare rootfs").
fn ps_while_exec_starts(who: Who) {
    let (cairn, image) = setup(who);
    for round in 0..10 {
        let mut child = spawn_exec(&cairn, &[&image, "sh", "-c", "sleep 0.3; echo done"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            cairn.ok(&["ps"]);
        }
        let out = finish(child, None, HUNG, "exec with ps alongside");
        assert!(
            out.status.success() && text(&out.stdout) == "done\n",
            "round {round}: {}",
            describe(&out)
        );
    }
    assert_no_container_state(&cairn, "after runs with ps alongside");
}

// 18. Many at once.

fn many_containers_at_once(who: Who) {
    let (cairn, image) = setup(who);
    let children: Vec<Child> = (0..50)
        .map(|_| spawn_exec(&cairn, &[&image, "sh", "-c", "echo $HOSTNAME"]))
        .collect();
    let mut hostnames = BTreeSet::new();
    let mut failures = BTreeMap::<String, usize>::new();
    for child in children {
        let out = finish(child, None, Duration::from_secs(120), "one of 50 execs");
        if !out.status.success() {
            let why = format!("{}: {}", out.status, text(&out.stderr).trim());
            *failures.entry(why).or_default() += 1;
            continue;
        }
        let hostname = text(&out.stdout).trim().to_owned();
        assert!(is_container_id(&hostname), "{}", describe(&out));
        assert!(
            hostnames.insert(hostname),
            "hostname seen twice: {hostnames:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of 50 runs failed as {}:\n{}",
        failures.values().sum::<usize>(),
        who.label(),
        failures
            .iter()
            .map(|(why, n)| format!("{n} x {why}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(hostnames.len(), 50);
    assert_no_container_state(&cairn, "after 50 containers");
}

#[test]
fn many_containers_at_once_as_root() {
    many_containers_at_once(Who::Root);
}

#[test]
fn many_containers_at_once_as_user_with_subids() {
    many_containers_at_once(Who::User(cairn_e2e::user_with_subids()));
}

// 19. kill -9 of cairn.

fn kill_9_of_cairn_leaves_nothing_running(who: Who) {
    let (cairn, image) = setup(who);
    let mut child = spawn_exec(&cairn, &[&image, "sh", "-c", &ready_then_sleep("")]);
    let record = wait_for_container(&cairn, &mut child);
    let init = record["pid"].as_i64().expect("pid");
    let mut pids = vec![init];
    pids.extend(descendants(init));
    assert!(pids.len() >= 2, "no command under init {init}: {pids:?}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let out = finish(child, None, Duration::from_secs(10), "killed cairn");
    assert_eq!(out.status.code(), None, "{}", describe(&out));
    let left = wait_gone(&pids, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "processes of the container still run 5 s after kill -9 of cairn: {left:?}"
    );
    // The next command on the store cleans up what the killed one left.
    assert_eq!(cairn.ok(&["ps", "--format", "json"]), "");
    assert_no_container_state(&cairn, "after kill -9 and ps");
    // And the store still runs containers.
    let out = exec_ok(&cairn, &[&image, "echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n");
}

// 20. Resource limits.

/// The host path of the cgroup directory of `pid` for `controller` (v1), or its unified
/// cgroup (v2).
fn host_cgroup(pid: i64, controller: &str) -> std::path::PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if controllers.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
        }
    }
    let unified = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no {controller} cgroup in:\n{text}"));
    Path::new("/sys/fs/cgroup").join(unified.trim_start_matches('/'))
}

fn read_limit(dir: &Path, v1: &str, v2: &str) -> String {
    let file = if dir.join(v1).exists() {
        dir.join(v1)
    } else {
        dir.join(v2)
    };
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

#[test]
fn limits_as_root() {
    let (cairn, image) = setup(Who::Root);
    let mut child = spawn_exec(
        &cairn,
        &[
            "--memory",
            "64m",
            "--pids-limit",
            "20",
            &image,
            "sh",
            "-c",
            &ready_then_sleep(""),
        ],
    );
    let record = wait_for_container(&cairn, &mut child);
    let init = record["pid"].as_i64().unwrap();
    let memory = host_cgroup(init, "memory");
    let pids = host_cgroup(init, "pids");
    assert!(
        memory != Path::new("/sys/fs/cgroup/memory") && memory != Path::new("/sys/fs/cgroup"),
        "the container is in the root memory cgroup"
    );
    assert_eq!(
        read_limit(&memory, "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read_limit(&pids, "pids.max", "pids.max"), "20");
    cairn.ok(&["kill", record["id"].as_str().unwrap()]);
    let out = finish(
        child,
        None,
        Duration::from_secs(20),
        "cairn exec after kill",
    );
    assert_eq!(exit_code(&out), 143, "{}", describe(&out));
    assert!(!memory.exists(), "{} left behind", memory.display());
    assert!(!pids.exists(), "{} left behind", pids.display());

    // The limits hold: 40 processes do not fit in 20, 256 MiB not in 64.
    let forks = "i=0; while [ $i -lt 40 ]; do sleep 1 & i=$((i+1)); done; wait; echo started=$i";
    let out = exec(&cairn, &["--pids-limit", "20", &image, "sh", "-c", forks]);
    assert!(
        !out.status.success(),
        "40 processes under --pids-limit 20: {}",
        describe(&out)
    );
    assert!(text(&out.stderr).contains("fork"), "{}", describe(&out));
    let out = exec_ok(&cairn, &[&image, "sh", "-c", forks]);
    assert_eq!(text(&out.stdout), "started=40\n");

    let hog = r#"BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; print "survived", length(s) }"#;
    let out = exec(&cairn, &["--memory", "64m", &image, "awk", hog]);
    assert_eq!(
        exit_code(&out),
        137,
        "256 MiB under --memory 64m: {}",
        describe(&out)
    );
    let out = exec_ok(&cairn, &[&image, "awk", hog]);
    assert_eq!(text(&out.stdout), "survived 268435456\n");
    assert_no_container_state(&cairn, "after limited runs");
}

fn limits_refused_rootless(user: &'static TestUser) {
    let (cairn, image) = setup(Who::User(user));
    for (option, value) in [
        ("--memory", "64m"),
        ("--pids-limit", "20"),
        ("--cpus", "0.5"),
    ] {
        let out = exec(&cairn, &[option, value, &image, "true"]);
        assert_eq!(exit_code(&out), 125, "{option}: {}", describe(&out));
        let line = one_line(&out.stderr);
        assert!(line.contains(option) && line.contains("rootless"), "{line}");
    }
    assert_no_container_state(&cairn, "after refused limits");
    exec_ok(&cairn, &[&image, "true"]);
}

#[test]
fn limits_refused_as_user_with_subids() {
    limits_refused_rootless(cairn_e2e::user_with_subids());
}

#[test]
fn limits_refused_as_user_without_subids() {
    limits_refused_rootless(cairn_e2e::user_without_subids());
}

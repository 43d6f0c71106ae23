//! The embedding API end to end, as root: a container built from an image, a filtered host
//! directory, environment, working directory and a mounted secret; its output, an exported
//! directory and its digest; a failing exec.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use cairn_e2e::{cairn_bin, fixtures, Scratch};
use cairn_engine::{Engine, ErrorKind, Secret};
use cairn_images::{HelperProgram, StoreOptions};

fn engine(scratch: &Scratch) -> (Engine, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut options = StoreOptions::new(scratch.path.join("store"));
    // The test binary does not call cairn_images::init: the cairn binary is the helper.
    options.helper = HelperProgram::Path(cairn_bin());
    let engine = rt.block_on(Engine::open(options)).unwrap();
    (engine, rt)
}

#[test]
fn container_api_runs_exports_and_masks_secrets() {
    let scratch = Scratch::new("engine");
    let (engine, rt) = engine(&scratch);
    let src = scratch.path.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "a\n").unwrap();
    fs::write(src.join("b.log"), "log\n").unwrap();
    let dir = engine.host().directory(&src).with_exclude(["*.log"]);
    let secret = Secret::new("tok", "api-secret-value");
    let c = engine
        .container()
        .from(fixtures().image("busybox:latest"))
        .with_env_variable("GREETING", "hi")
        .with_workdir("/work")
        .with_directory("/work", &dir)
        .with_mounted_secret("/run/s", &secret)
        .with_exec([
            "sh",
            "-c",
            "echo $GREETING; ls; cat /run/s; echo; pwd; mkdir -p /o && echo out > /o/f",
        ]);
    rt.block_on(async {
        assert_eq!(c.stdout().await.unwrap(), "hi\na.txt\n***\n/work\n");
        assert_eq!(c.exit_code().await.unwrap(), Some(0));
        let exported = scratch.path.join("exported");
        c.directory("/o").export(&exported).await.unwrap();
        assert_eq!(fs::read_to_string(exported.join("f")).unwrap(), "out\n");

        // A container's directory hashes as the same tree on the host does.
        let same = scratch.path.join("same");
        fs::create_dir_all(&same).unwrap();
        fs::write(same.join("f"), "out\n").unwrap();
        let mode = fs::metadata(exported.join("f"))
            .unwrap()
            .permissions()
            .mode();
        fs::set_permissions(same.join("f"), fs::Permissions::from_mode(mode)).unwrap();
        let host = engine.host().directory(&same).digest().await.unwrap();
        assert_eq!(c.directory("/o").digest().await.unwrap(), host);
        let other = engine.host().directory(&src).digest().await.unwrap();
        assert_ne!(other, host);

        let failing = engine
            .container()
            .with_name("broken")
            .from(fixtures().image("busybox:latest"))
            .with_exec(["sh", "-c", "echo first >&2; echo last-words >&2; exit 4"]);
        let err = failing.sync().await.err().expect("exit 4 fails");
        let text = error_chain(&err);
        assert!(
            text.contains("\"broken\"") && text.contains("code 4"),
            "{text}"
        );
        assert!(text.contains("first\nlast-words"), "{text}");
        // The step's own fault, seen through the solver's error.
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    });
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

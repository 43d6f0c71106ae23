//! `cairn run --progress tty`: a live view of the running steps on the terminal.
//!
//! The screen has two parts. Above, a log of finished steps: one line each (done, cached,
//! failed, skipped), printed once and left to scroll; a failed step keeps the tail of its
//! stderr under its line. Below, the *live region*: a line per running step with a spinner and
//! its elapsed time, its last log lines dimmed under it, and a footer with the counts. The live
//! region is redrawn in place ten times a second: the cursor moves up over the last frame, each
//! line is cleared and rewritten, the rest of the screen is cleared, all in one write inside a
//! synchronized-update bracket, so the terminal never shows a half-drawn frame. Lines are cut to
//! the terminal's width and the region to its height, both read again every frame, so a resize
//! takes effect at the next frame.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use cairn_engine::{Event, EventKind, VertexId};
use cairn_oci::Digest;
use console::{measure_text_width, style, truncate_str, Term};

/// How many log lines a running step shows.
const LOG_LINES: usize = 4;
/// How many stderr lines stay under a failed step.
const STDERR_TAIL: usize = 10;
const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// The frame interval: ten redraws a second.
pub const FRAME: Duration = Duration::from_millis(100);

/// Where a step is.
enum State {
    Waiting,
    Running,
    Finished,
}

struct Step {
    name: String,
    state: State,
    /// When its first vertex started.
    since: Option<Instant>,
    /// The vertices of the step running now.
    active: HashSet<Digest>,
    /// The last complete log lines and the line being written.
    logs: VecDeque<String>,
    partial: String,
    stderr: VecDeque<String>,
    stderr_partial: String,
    /// The first failure among the step's vertices: the error and how long it ran.
    failure: Option<(String, Duration)>,
}

impl Step {
    fn new(name: &str) -> Self {
        Step {
            name: name.to_owned(),
            state: State::Waiting,
            since: None,
            active: HashSet::new(),
            logs: VecDeque::new(),
            partial: String::new(),
            stderr: VecDeque::new(),
            stderr_partial: String::new(),
            failure: None,
        }
    }
}

/// The live view. Feed it events with [`TtyView::event`], call [`TtyView::draw`] every
/// [`FRAME`], and [`TtyView::finish`] at the end.
pub struct TtyView {
    start: Instant,
    steps: Vec<Step>,
    index: HashMap<String, usize>,
    /// The vertex that stands for each step's result, by digest.
    tops: HashMap<Digest, Vec<String>>,
    /// Finished-step lines not yet written above the live region.
    committed: Vec<String>,
    /// Lines of the live region on screen now.
    drawn: usize,
    frame: usize,
    counts: Counts,
    total: usize,
}

#[derive(Default)]
struct Counts {
    done: usize,
    cached: usize,
    failed: usize,
    skipped: usize,
}

impl TtyView {
    /// A view of these steps (in pipeline order), each with its result vertex.
    pub fn new(steps: &[(String, Option<VertexId>)]) -> Self {
        let mut view = TtyView {
            start: Instant::now(),
            steps: Vec::new(),
            index: HashMap::new(),
            tops: HashMap::new(),
            committed: Vec::new(),
            drawn: 0,
            frame: 0,
            counts: Counts::default(),
            total: steps.len(),
        };
        for (name, top) in steps {
            view.step(name);
            if let Some(top) = top {
                let names = view.tops.entry(top.digest().clone()).or_default();
                names.push(name.clone());
            }
        }
        // Hide the cursor while the region is redrawn; `finish` shows it again.
        let _ = std::io::stderr().write_all(b"\x1b[?25l");
        view
    }

    fn step(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.steps.push(Step::new(name));
        self.index.insert(name.to_owned(), self.steps.len() - 1);
        self.steps.len() - 1
    }

    /// Takes in one progress event.
    pub fn event(&mut self, event: &Event) {
        let v = &event.vertex;
        let i = self.step(v.name());
        let is_top = self
            .tops
            .get(v.digest())
            .is_some_and(|names| names.iter().any(|n| n == v.name()));
        let step = &mut self.steps[i];
        match &event.kind {
            EventKind::Started => {
                if matches!(step.state, State::Waiting) {
                    step.state = State::Running;
                    step.since = Some(Instant::now());
                }
                step.active.insert(v.digest().clone());
            }
            EventKind::Log { stream, bytes } => {
                let text = String::from_utf8_lossy(bytes);
                push_lines(&mut step.logs, &mut step.partial, &text, LOG_LINES);
                if *stream == cairn_engine::LogStream::Stderr {
                    let tail = &mut step.stderr;
                    push_lines(tail, &mut step.stderr_partial, &text, STDERR_TAIL);
                }
            }
            EventKind::Failed { error, duration } => {
                step.active.remove(v.digest());
                if step.failure.is_none() {
                    step.failure = Some((innermost(error), *duration));
                }
                if is_top {
                    self.finish_step(i, Ending::Failed);
                }
            }
            EventKind::Cached { duration } | EventKind::Completed { duration } => {
                step.active.remove(v.digest());
                if is_top {
                    let cached = matches!(event.kind, EventKind::Cached { .. });
                    let ending = match cached {
                        true => Ending::Cached,
                        false => Ending::Done(*duration),
                    };
                    self.finish_step(i, ending);
                }
            }
            EventKind::Skipped { because } => {
                step.active.remove(v.digest());
                if is_top {
                    // A vertex of this very step failed: the step failed, it was not skipped.
                    let ending = match because.name() == step.name && step.failure.is_some() {
                        true => Ending::Failed,
                        false => Ending::Skipped(because.name().to_owned()),
                    };
                    self.finish_step(i, ending);
                }
            }
            EventKind::Cancelled => {
                step.active.remove(v.digest());
                if is_top {
                    self.finish_step(i, Ending::Cancelled);
                }
            }
            _ => {}
        }
    }

    fn finish_step(&mut self, i: usize, ending: Ending) {
        let step = &mut self.steps[i];
        if matches!(step.state, State::Finished) {
            return;
        }
        step.state = State::Finished;
        let elapsed = step.since.map(|s| s.elapsed()).unwrap_or_default();
        let name = style(&step.name).for_stderr().bold();
        let failed = matches!(ending, Ending::Failed);
        let line = match ending {
            Ending::Done(d) => {
                self.counts.done += 1;
                let mark = style("✔").for_stderr().green();
                format!("{mark} {name} done {}", seconds(d.max(elapsed)))
            }
            Ending::Cached => {
                self.counts.cached += 1;
                let mark = style("●").for_stderr().cyan();
                format!("{mark} {name} {}", style("cached").for_stderr().cyan())
            }
            Ending::Failed => {
                self.counts.failed += 1;
                let mark = style("✘").for_stderr().red();
                let (error, d) = step.failure.clone().unwrap_or_default();
                let failed = style("failed").for_stderr().red();
                format!(
                    "{mark} {name} {failed} after {}: {error}",
                    seconds(d.max(elapsed))
                )
            }
            Ending::Skipped(because) => {
                self.counts.skipped += 1;
                let mark = style("⊘").for_stderr().yellow();
                format!("{mark} {name} skipped: dependency {because} failed")
            }
            Ending::Cancelled => {
                self.counts.skipped += 1;
                format!("{} {name} cancelled", style("⊘").for_stderr().yellow())
            }
        };
        self.committed.push(line);
        if failed {
            let mut tail: Vec<String> = step.stderr.iter().cloned().collect();
            if !step.stderr_partial.is_empty() {
                tail.push(step.stderr_partial.clone());
            }
            for l in tail {
                let l = format!("    │ {l}");
                self.committed.push(style(l).for_stderr().dim().to_string());
            }
        }
    }

    /// Redraws: finished steps above, the live region below.
    pub fn draw(&mut self) {
        self.frame = self.frame.wrapping_add(1);
        let live = self.live_lines();
        self.write_frame(&live);
    }

    /// Writes the last finished steps, removes the live region and prints the totals.
    pub fn finish(&mut self) {
        let c = &self.counts;
        let mut totals = vec![format!("{} done", c.done), format!("{} cached", c.cached)];
        if c.failed > 0 {
            totals.push(style(format!("{} failed", c.failed)).red().to_string());
        }
        if c.skipped > 0 {
            totals.push(format!("{} skipped", c.skipped));
        }
        let elapsed = seconds(self.start.elapsed());
        let line = format!("{} in {elapsed}", totals.join(", "));
        self.committed
            .push(style(line).for_stderr().dim().to_string());
        self.write_frame(&[]);
        let _ = std::io::stderr().write_all(b"\x1b[?25h");
    }

    fn live_lines(&self) -> Vec<String> {
        let (rows, _) = Term::stderr().size_checked().unwrap_or((24, 80));
        // Leave a line for the cursor, and keep the region on one screen: the cursor cannot
        // move up past the top of the screen.
        let room = (rows as usize).saturating_sub(2).max(3);
        // A step waiting for another step's result is not shown running.
        let running: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| matches!(s.state, State::Running) && !s.active.is_empty())
            .collect();
        let spinner = SPINNER[self.frame % SPINNER.len()];
        // Fewer log lines per step when the screen is short.
        let mut per_step = LOG_LINES;
        while per_step > 0 && running.len() * (1 + per_step) + 1 > room {
            per_step -= 1;
        }
        let mut lines = Vec::new();
        for (n, step) in running.iter().enumerate() {
            if lines.len() + 2 > room {
                let more = format!("  … and {} more running", running.len() - n);
                lines.push(style(more).for_stderr().dim().to_string());
                break;
            }
            let elapsed = step.since.map(|s| s.elapsed()).unwrap_or_default();
            let name = style(&step.name).for_stderr().bold();
            let spinner = style(spinner).for_stderr().blue();
            lines.push(format!("{spinner} {name} {}", seconds(elapsed)));
            let mut logs: Vec<&String> = step.logs.iter().collect();
            if !step.partial.is_empty() {
                logs.push(&step.partial);
            }
            let skip = logs.len().saturating_sub(per_step);
            for l in &logs[skip..] {
                let l = format!("    │ {l}");
                lines.push(style(l).for_stderr().dim().to_string());
            }
        }
        let finished = self.counts.done + self.counts.cached + self.counts.failed;
        let footer = format!(
            "cairn run · {finished}/{} steps finished · {} running · {}",
            self.total,
            running.len(),
            seconds(self.start.elapsed())
        );
        lines.push(style(footer).for_stderr().dim().to_string());
        lines
    }

    fn write_frame(&mut self, live: &[String]) {
        let (_, cols) = Term::stderr().size_checked().unwrap_or((24, 80));
        let width = (cols as usize).saturating_sub(1).max(10);
        let fit = |l: &str| -> String {
            match measure_text_width(l) > width {
                true => truncate_str(l, width, "…").into_owned(),
                false => l.to_owned(),
            }
        };
        let mut out = String::from("\x1b[?2026h");
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        out.push('\r');
        for l in self.committed.drain(..).chain(live.iter().cloned()) {
            out.push_str("\x1b[2K");
            out.push_str(&fit(&l));
            out.push('\n');
        }
        out.push_str("\x1b[J\x1b[?2026l");
        self.drawn = live.len();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }
}

enum Ending {
    Done(Duration),
    Cached,
    Failed,
    Skipped(String),
    Cancelled,
}

/// The first line of the innermost error: what actually went wrong, without the vertex and
/// step wrappers (the line already names the step) or the stderr header (the tail follows).
fn innermost(error: &dyn std::error::Error) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let text = inner.to_string();
    let first = text.lines().next().unwrap_or("");
    let first = first
        .trim_end_matches(':')
        .trim_end_matches("; stderr ends with");
    first.to_owned()
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Adds `text` to the last `keep` lines, the unfinished last line kept in `partial`. Lines are
/// made safe to draw: escape sequences dropped, a carriage return keeps what follows it (as a
/// terminal would show), tabs become spaces, other control characters go.
fn push_lines(lines: &mut VecDeque<String>, partial: &mut String, text: &str, keep: usize) {
    for (n, piece) in text.split('\n').enumerate() {
        if n > 0 {
            let line = std::mem::take(partial);
            lines.push_back(line);
            while lines.len() > keep {
                lines.pop_front();
            }
        }
        partial.push_str(piece);
        if let Some(at) = partial.rfind('\r') {
            // `\r\n` endings leave an empty tail: keep the line itself then.
            if at + 1 < partial.len() {
                partial.drain(..=at);
            } else {
                partial.truncate(at);
            }
        }
        *partial = sanitize(partial);
    }
}

fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte; other escapes: ESC and one character.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_the_tail_and_lose_control_characters() {
        let (mut lines, mut partial) = (VecDeque::new(), String::new());
        push_lines(&mut lines, &mut partial, "one\ntwo\nthr", 2);
        push_lines(&mut lines, &mut partial, "ee\n\x1b[31mred\x1b[0m\tx\r\n", 2);
        assert_eq!(lines, ["three", "red    x"]);
        assert_eq!(partial, "");
        push_lines(&mut lines, &mut partial, "10%\r20%\r30%", 2);
        assert_eq!(partial, "30%");
    }
}

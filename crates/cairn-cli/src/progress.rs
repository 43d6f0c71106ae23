//! Per-layer progress bars for `cairn pull` on a terminal.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_images::PullProgress;
use cairn_oci::Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bytes as people read them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One bar per layer: bytes received, rate, then unpacking and done.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn with_bar(&self, layer: &Digest, f: impl FnOnce(&ProgressBar)) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(layer)
        {
            f(bar);
        }
    }

    pub fn finish(&self) {
        for bar in self.bars.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

impl PullProgress for Bars {
    fn resolved(&self, reference: &str, digest: &Digest, layers: &[(Digest, u64)]) {
        let _ = self.multi.println(format!("{reference}: {digest}"));
        let style = ProgressStyle::with_template(
            "{prefix} {msg:11} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for (layer, size) in layers {
            let bar = self.multi.add(ProgressBar::new(*size));
            bar.set_style(style.clone());
            bar.set_prefix(layer.short().to_owned());
            bar.set_message("waiting");
            bars.insert(layer.clone(), bar);
        }
    }

    fn downloading(&self, layer: &Digest, done: u64, _total: u64) {
        self.with_bar(layer, |b| {
            b.set_message("downloading");
            b.set_position(done);
        });
    }

    fn already_present(&self, layer: &Digest) {
        self.with_bar(layer, |b| {
            b.set_message("present");
            b.set_position(b.length().unwrap_or(0));
        });
    }

    fn unpacking(&self, layer: &Digest) {
        self.with_bar(layer, |b| {
            b.set_position(b.length().unwrap_or(0));
            b.set_message("unpacking");
        });
    }

    fn unpacked(&self, layer: &Digest) {
        self.with_bar(layer, |b| {
            b.set_message("done");
            b.finish();
        });
    }
}

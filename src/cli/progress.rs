//! Progress on stderr for long commands (indicatif): one bar, drawn only when stderr is a
//! terminal and the command is not printing JSON, so pipes, logs and `--json` stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `total` units of work.
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// A bar of `total` units; hidden with `json` (and by indicatif when stderr is not a
    /// terminal).
    pub(super) fn new(total: u64, json: bool) -> Self {
        let target = if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress(bar)
    }

    /// Moves to `done` of `total` units, labelled `message`.
    #[cfg_attr(not(feature = "lm"), allow(dead_code))]
    pub(super) fn set(&self, done: u64, total: u64, message: &str) {
        self.0.set_length(total);
        self.0.set_position(done);
        self.0.set_message(message.to_string());
    }

    /// One more unit done, labelled `message`.
    pub(super) fn tick(&self, message: &str) {
        self.0.set_message(message.to_string());
        self.0.inc(1);
    }

    /// Prints `line` on stderr above the bar.
    #[cfg_attr(not(feature = "lm"), allow(dead_code))]
    pub(super) fn line(&self, line: &str) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }

    /// Removes the bar.
    pub(super) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

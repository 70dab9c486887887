//! Progress of long commands: a bar on a terminal; elsewhere (a CI log, `2> file`), where
//! the bar would draw nothing, a line on stderr at every tenth of the work.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// One long piece of work of `len` units.
#[derive(Clone)]
pub(crate) struct Progress {
    bar: ProgressBar,
    /// What the plain lines call the work; `None` on a terminal.
    plain: Option<&'static str>,
}

impl Progress {
    /// `what` names the units in the plain lines ("steps", "runs"); `template` is the
    /// bar's indicatif template.
    pub(crate) fn new(len: usize, what: &'static str, template: &str) -> Self {
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            plain: (!std::io::stderr().is_terminal()).then_some(what),
        }
    }

    pub(crate) fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// One unit done.
    pub(crate) fn inc(&self) {
        self.bar.inc(1);
        let (Some(what), Some(len)) = (self.plain, self.bar.length()) else {
            return;
        };
        let done = self.bar.position();
        if len > 0 && done * 10 / len != (done - 1) * 10 / len {
            let msg = self.bar.message();
            eprintln!(
                "{done}/{len} {what}{}{msg}  [{:.0} s]",
                if msg.is_empty() { "" } else { "  " },
                self.bar.elapsed().as_secs_f64()
            );
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

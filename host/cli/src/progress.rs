//! Live progress of a run: spinners (indicatif) on a terminal, plain lines
//! otherwise, JSON lines with `--json`; stage logs with `--follow`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sentinel_api::{StageName, StageStatus};
use sentinel_engine::{Progress, ProgressFn};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fancy,
    Plain,
    Json,
}

impl Mode {
    pub fn detect(json: bool) -> Self {
        if json {
            Self::Json
        } else if std::io::stderr().is_terminal() {
            Self::Fancy
        } else {
            Self::Plain
        }
    }
}

struct State {
    mode: Mode,
    follow: bool,
    multi: MultiProgress,
    bars: HashMap<StageName, ProgressBar>,
    partial: HashMap<StageName, Vec<u8>>,
    width: usize,
}

fn symbol(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Succeeded => "✔",
        StageStatus::Failed | StageStatus::TimedOut | StageStatus::Interrupted => "✘",
        StageStatus::Skipped => "↷",
        StageStatus::Cancelled => "■",
        _ => "·",
    }
}

impl State {
    fn line(&self, text: String) {
        match self.mode {
            Mode::Fancy => {
                let _ = self.multi.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    fn log(&mut self, name: &StageName, bytes: &[u8], flush: bool) {
        let buf = self.partial.entry(name.clone()).or_default();
        buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        if flush && !buf.is_empty() {
            lines.push(String::from_utf8_lossy(&std::mem::take(buf)).into_owned());
        }
        for l in lines {
            self.line(format!("{:>w$} │ {l}", name.as_str(), w = self.width));
        }
    }

    fn handle(&mut self, p: Progress) {
        if self.mode == Mode::Json {
            let v = match &p {
                Progress::RunStarted { run_id, stages } => {
                    serde_json::json!({"event": "run_started", "run": run_id, "stages": stages})
                }
                Progress::Stage {
                    name,
                    status,
                    reason,
                    duration_ms,
                } => {
                    serde_json::json!({"event": "stage", "stage": name, "status": status, "reason": reason, "duration_ms": duration_ms})
                }
                Progress::Log { .. }
                | Progress::Published { .. }
                | Progress::RunRequeued { .. } => return,
                Progress::RunFinished { run_id, status } => {
                    serde_json::json!({"event": "run_finished", "run": run_id, "status": status})
                }
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
            return;
        }
        match p {
            Progress::RunStarted { run_id, stages } => {
                self.width = stages.iter().map(|s| s.as_str().len()).max().unwrap_or(5);
                self.line(format!("run {run_id}: {} stages", stages.len()));
            }
            Progress::Log { name, bytes } => {
                if self.follow {
                    self.log(&name, &bytes, false);
                }
            }
            Progress::Stage {
                name,
                status,
                reason,
                duration_ms,
            } => {
                if status == StageStatus::Pending || status == StageStatus::Queued {
                    return;
                }
                if status == StageStatus::Running {
                    if self.mode == Mode::Fancy {
                        let bar = self.multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_message(format!("{:<w$} running", name.as_str(), w = self.width));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        self.bars.insert(name, bar);
                    } else {
                        self.line(format!("· {:<w$} running", name.as_str(), w = self.width));
                    }
                    return;
                }
                if self.follow {
                    self.log(&name, b"", true);
                }
                let took = duration_ms
                    .map(|ms| format!(" ({:.1}s)", ms as f64 / 1000.0))
                    .unwrap_or_default();
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                let text = format!(
                    "{} {:<w$} {status}{took}{why}",
                    symbol(status),
                    name.as_str(),
                    w = self.width
                );
                match self.bars.remove(&name) {
                    Some(bar) => {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                        self.line(text);
                    }
                    None => self.line(text),
                }
            }
            Progress::Published { .. } | Progress::RunRequeued { .. } => {}
            Progress::RunFinished { .. } => {
                for (_, bar) in self.bars.drain() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

/// A progress callback for the engine.
pub fn reporter(mode: Mode, follow: bool) -> ProgressFn {
    let state = Arc::new(Mutex::new(State {
        mode,
        follow,
        multi: MultiProgress::new(),
        bars: HashMap::new(),
        partial: HashMap::new(),
        width: 5,
    }));
    Arc::new(move |p| {
        if let Ok(mut s) = state.lock() {
            s.handle(p);
        }
    })
}

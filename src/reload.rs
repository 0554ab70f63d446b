//! Hot reload: watch the table's directory, debounce, load, validate, swap.
//!
//! The [`Reloader`] is the only writer of the snapshot `ArcSwap`. It watches
//! the *directory* of the table, not the file: editors save by rename and
//! Kubernetes swaps a `..data` symlink, both of which silently end a watch on
//! the file itself (on Linux with inotify on the runtime's reactor: no thread). A
//! change is acted on once the directory has been quiet for 250 ms; SIGHUP and a slow
//! periodic re-read back up the watcher. Identical bytes are skipped by hash. A table
//! that fails to load leaves the current one serving; the error is logged,
//! counted and shown at the admin `/routes` endpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::{self, Listen, ServerSettings};
use crate::proxy::ProxyState;
use crate::server::Shutdown;
use crate::snapshot::Snapshot;

/// How long the table's directory must be quiet after a change before one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest wait after a change for the directory to go quiet (something else in it
/// may be written all the time).
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// Periodic re-read, for filesystems or setups where events get lost.
pub const PERIODIC: Duration = Duration::from_secs(30);

/// What the last reload attempts left behind, for `/routes`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// The last rejected table: when and why. Cleared by the next success.
    pub last_error: Option<ReloadError>,
    /// `[listen]`/`[server]` keys changed in the file but not applied: they need a restart.
    pub restart_required: Vec<String>,
}

/// A rejected reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadError {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// File, line and fix, one problem per line.
    pub message: String,
}

/// Counts published after every reload attempt, so callers can wait for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Generation in use.
    pub generation: u64,
    /// Rejected tables so far.
    pub failures: u64,
    /// Reload attempts finished so far, whatever their outcome.
    pub attempts: u64,
}

/// The outcome of one reload attempt.
#[derive(Debug)]
pub enum Outcome {
    /// The file's bytes are those already serving (or already rejected).
    Unchanged,
    /// A new generation is serving.
    Applied(u64),
    /// The file was rejected; the previous table keeps serving.
    Rejected(config::ConfigError),
}

/// Loads, validates and swaps tables. Exactly one exists per running proxy.
pub struct Reloader {
    path: PathBuf,
    state: Arc<ProxyState>,
    status: Arc<Mutex<ReloadStatus>>,
    counts: watch::Sender<ReloadCounts>,
    running: (Listen, ServerSettings),
    last_rejected: Option<u64>,
}

impl Reloader {
    /// A reloader for the table at `path`, currently served by `state`.
    pub fn new(
        path: PathBuf,
        state: Arc<ProxyState>,
        status: Arc<Mutex<ReloadStatus>>,
        counts: watch::Sender<ReloadCounts>,
    ) -> Self {
        let current = state.snapshot.load();
        let running = (current.table.listen.clone(), current.table.server.clone());
        drop(current);
        Reloader {
            path,
            state,
            status,
            counts,
            running,
            last_rejected: None,
        }
    }

    /// Reads the table and swaps it in if it is new and valid.
    pub fn reload(&mut self, trigger: &'static str) -> Outcome {
        let current = self.state.snapshot.load_full();
        let bytes = match config::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                let key = xxhash_rust::xxh3::xxh3_64(error.to_string().as_bytes());
                return self.reject(trigger, key, error);
            }
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        if hash == current.hash {
            // Reverting a broken edit to the serving bytes resolves the error too.
            if self.last_rejected.take().is_some()
                && let Ok(mut status) = self.status.lock()
            {
                status.last_error = None;
            }
            return Outcome::Unchanged;
        }
        if Some(hash) == self.last_rejected {
            return Outcome::Unchanged;
        }
        let table = match config::parse_bytes(&bytes, &self.path) {
            Ok(table) => table,
            Err(error) => return self.reject(trigger, hash, error),
        };
        let restart_required = restart_keys(&self.running, &table.listen, &table.server);
        if !restart_required.is_empty() {
            tracing::warn!(file = %self.path.display(), keys = ?restart_required, "these settings only take effect after a restart");
        }
        let generation = current.generation + 1;
        let snapshot = Snapshot::build(
            table,
            hash,
            generation,
            &self.state.metrics,
            &self.state.shadows,
            Some(&current),
        );
        self.state.snapshot.store(Arc::new(snapshot));
        self.state
            .snapshot
            .load()
            .retire_metrics_missing_from(&current);
        self.state.metrics.reload(true);
        self.state.metrics.set_generation(generation);
        self.last_rejected = None;
        if let Ok(mut status) = self.status.lock() {
            status.last_error = None;
            status.restart_required = restart_required;
        }
        self.counts.send_modify(|c| c.generation = generation);
        tracing::info!(file = %self.path.display(), generation, trigger, "route table reloaded");
        Outcome::Applied(generation)
    }

    /// Records a rejected table. `key` identifies the rejected content (or read error),
    /// so re-reading the same broken file is not counted or logged again.
    fn reject(&mut self, trigger: &'static str, key: u64, error: config::ConfigError) -> Outcome {
        if self.last_rejected == Some(key) {
            return Outcome::Unchanged;
        }
        self.last_rejected = Some(key);
        tracing::error!(
            trigger,
            "route table rejected; the previous table keeps serving:\n{error}"
        );
        self.state.metrics.reload(false);
        if let Ok(mut status) = self.status.lock() {
            let at_unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            status.last_error = Some(ReloadError {
                at_unix,
                message: error.to_string(),
            });
        }
        self.counts.send_modify(|c| c.failures += 1);
        Outcome::Rejected(error)
    }

    /// Watches the table's directory, SIGHUP and a periodic timer until `shutdown`.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = match dir_watch::watch_dir(&table_dir(&self.path), tx) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the table's directory; reload with SIGHUP (also re-read every {PERIODIC:?})");
                None
            }
        };
        let mut hangup = hangup_signal();
        let mut periodic = tokio::time::interval(PERIODIC);
        periodic.tick().await;
        // One catch-up read now that the watch is registered: an edit made between the
        // initial load and this point produced no event we could see.
        let mut pending = Some("start");
        loop {
            let trigger = match pending.take() {
                Some(trigger) => trigger,
                None => tokio::select! {
                    Some(()) = rx.recv() => "watch",
                    Some(()) = recv_hangup(&mut hangup) => "sighup",
                    _ = periodic.tick() => "periodic",
                    () = shutdown.wait() => return,
                },
            };
            // Loading is synchronous file IO and CPU: keep it off the async workers.
            self = match tokio::task::spawn_blocking(move || {
                let _ = self.reload(trigger);
                self.counts.send_modify(|c| c.attempts += 1);
                self
            })
            .await
            {
                Ok(reloader) => reloader,
                Err(e) => {
                    tracing::error!(error = %e, "reload task failed; hot reload stops");
                    return;
                }
            };
        }
    }
}

fn restart_keys(
    running: &(Listen, ServerSettings),
    listen: &Listen,
    server: &ServerSettings,
) -> Vec<String> {
    let (old_listen, old_server) = running;
    let mut keys = Vec::new();
    if old_listen.proxy != listen.proxy {
        keys.push("listen.proxy".to_owned());
    }
    if old_listen.admin != listen.admin {
        keys.push("listen.admin".to_owned());
    }
    if old_server != server {
        keys.push("server".to_owned());
    }
    keys
}

/// Watches the table's directory on the runtime's reactor: no thread of its own.
#[cfg(target_os = "linux")]
mod dir_watch {
    use std::io;
    use std::path::Path;

    use inotify::{EventMask, EventStream, Inotify, StreamExt, WatchMask};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::{DEBOUNCE, DEBOUNCE_MAX, PERIODIC};

    /// Bytes of events read at once.
    type Buffer = [u8; 4096];

    /// The watch; it stops when dropped.
    pub struct Watch(tokio::task::JoinHandle<()>);

    impl Drop for Watch {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// Sends on `tx` after each change in `dir`, once it has been quiet for
    /// [`DEBOUNCE`] (or [`DEBOUNCE_MAX`] has passed since the change).
    pub fn watch_dir(dir: &Path, tx: mpsc::Sender<()>) -> io::Result<Watch> {
        let inotify = Inotify::init()?;
        // Changes only: opening, reading and closing the table unchanged (as the
        // reloader does) would otherwise look like an edit.
        let changes = WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MODIFY
            | WatchMask::ATTRIB
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        inotify.watches().add(dir, changes)?;
        let events = inotify.into_event_stream([0u8; 4096])?;
        Ok(Watch(tokio::spawn(watch(events, tx))))
    }

    /// What one event says.
    enum Seen {
        Change,
        /// The directory itself went, or the watch failed: no more events will come.
        Gone,
    }

    async fn next(events: &mut EventStream<Buffer>) -> Seen {
        let gone = EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF;
        match events.next().await {
            Some(Ok(event)) if event.mask.intersects(gone) => {
                tracing::warn!(
                    "the table's directory was removed or moved: file changes are no longer seen; reload with SIGHUP (also re-read every {PERIODIC:?})"
                );
                Seen::Gone
            }
            // Q_OVERFLOW (events were lost) counts as a change too.
            Some(Ok(_)) => Seen::Change,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching the table's directory failed: file changes are no longer seen; reload with SIGHUP (also re-read every {PERIODIC:?})");
                Seen::Gone
            }
            None => Seen::Gone,
        }
    }

    async fn watch(mut events: EventStream<Buffer>, tx: mpsc::Sender<()>) {
        loop {
            if let Seen::Gone = next(&mut events).await {
                return;
            }
            // An editor's save or a ConfigMap update is several events: wait for quiet.
            let latest = Instant::now() + DEBOUNCE_MAX;
            let mut gone = false;
            loop {
                let quiet = (Instant::now() + DEBOUNCE).min(latest);
                tokio::select! {
                    seen = next(&mut events) => match seen {
                        Seen::Change => continue,
                        Seen::Gone => {
                            gone = true;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(quiet) => break,
                }
            }
            // A full channel means a reload is already pending: coalesce.
            let _ = tx.try_send(());
            if gone {
                return;
            }
        }
    }
}

/// Watches the table's directory with notify (a thread of its own).
#[cfg(not(target_os = "linux"))]
mod dir_watch {
    use std::io;
    use std::path::Path;

    use tokio::sync::mpsc;

    use super::DEBOUNCE;

    /// The watch; it stops when dropped.
    pub type Watch = notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >;

    /// Sends on `tx` after each (debounced) change in `dir`.
    pub fn watch_dir(dir: &Path, tx: mpsc::Sender<()>) -> io::Result<Watch> {
        use notify::{EventKind, RecursiveMode, event::AccessKind, event::AccessMode};
        let mut debouncer = notify_debouncer_full::new_debouncer(
            DEBOUNCE,
            None,
            move |result: notify_debouncer_full::DebounceEventResult| {
                let Ok(events) = result else { return };
                // Reads (including our own) are not changes; a writer closing the file is.
                let relevant = events.iter().any(|e| match e.event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => true,
                });
                if relevant {
                    // A full channel means a reload is already pending: coalesce.
                    let _ = tx.try_send(());
                }
            },
        )
        .map_err(io::Error::other)?;
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(io::Error::other)?;
        Ok(debouncer)
    }
}

/// The directory a table at `path` is in.
fn table_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn recv_hangup(signal: &mut Hangup) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}

//! The device event loop (event-manager): the VMM's own control events (guest reset request,
//! termination signals, a vCPU's exit report) plus any device subscribers (virtio queues).

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitLatch, VmExit};

/// A subscriber shared with the event manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

const TOKEN_RESET: u32 = 1;
const TOKEN_SIGNAL: u32 = 2;
const TOKEN_EXIT: u32 = 3;
const TOKEN_SNAPSHOT: u32 = 4;

/// The eventfd the termination-signal handler writes, and the signal it saw.
static SIGNAL_EVT: OnceLock<EventFd> = OnceLock::new();
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_term_signal(num: libc::c_int) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) on an eventfd is async-signal-safe; the buffer is a live local of
        // the size the eventfd expects. The result is irrelevant: a failure means a wake-up
        // is already pending.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGTERM and SIGINT to the event loop (once per process); returns the eventfd.
pub fn install_signal_handlers() -> std::io::Result<&'static EventFd> {
    if let Some(e) = SIGNAL_EVT.get() {
        return Ok(e);
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    let evt = SIGNAL_EVT.get_or_init(|| evt);
    SIGNAL_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // does async-signal-safe work (atomic stores, write(2)); the return value is checked.
        let ret = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_term_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(evt)
}

/// The eventfd the SIGUSR1 handler writes (a snapshot request from the host).
static SNAPSHOT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_snapshot_signal(_: libc::c_int) {
    let fd = SNAPSHOT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) on an eventfd is async-signal-safe; the buffer is a live local of
        // the size the eventfd expects; a failure means a wake-up is already pending.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGUSR1 to `evt` (once per process: the VM that asked for snapshots on a signal).
pub fn install_snapshot_signal(evt: &EventFd) -> std::io::Result<()> {
    SNAPSHOT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
    // does async-signal-safe work (an atomic load, write(2)); the return value is checked.
    let ret = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_snapshot_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut())
    };
    match ret {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Turns control eventfds into exit reasons.
struct Control {
    reset: EventFd,
    signal: Option<EventFd>,
    latch: Arc<ExitLatch>,
    exit_evt: EventFd,
    /// SIGUSR1's eventfd, and what to do before the VM stops for the snapshot.
    snapshot: Option<(EventFd, Box<dyn Fn() + Send>)>,
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &EventFd, token| {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                let _ = writeln!(
                    std::io::stderr(),
                    "crx-vmm: cannot watch a control eventfd: {e}"
                );
            }
        };
        add(&self.reset, TOKEN_RESET);
        add(&self.exit_evt, TOKEN_EXIT);
        if let Some(s) = &self.signal {
            add(s, TOKEN_SIGNAL);
        }
        if let Some((s, _)) = &self.snapshot {
            add(s, TOKEN_SNAPSHOT);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_RESET => {
                let _ = self.reset.read();
                self.latch.set(VmExit::GuestReset);
            }
            TOKEN_SIGNAL => {
                if let Some(s) = &self.signal {
                    let _ = s.read();
                }
                self.latch
                    .set(VmExit::Signal(LAST_SIGNAL.load(Ordering::SeqCst)));
            }
            TOKEN_SNAPSHOT => {
                if let Some((s, request)) = &self.snapshot {
                    let _ = s.read();
                    request();
                    self.latch.set(VmExit::Snapshot);
                }
            }
            _ => {
                let _ = self.exit_evt.read();
            }
        }
    }
}

/// The event loop of one VM.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    latch: Arc<ExitLatch>,
}

/// Event loop errors.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Creating the epoll instance or an eventfd failed.
    #[error("cannot create the event loop")]
    Create(#[source] std::io::Error),
    /// epoll_wait failed.
    #[error("event loop failed")]
    Run(#[source] event_manager::Error),
}

impl EventLoop {
    /// A loop watching `reset` (i8042), the latch, the signal eventfd if given, and a snapshot
    /// request eventfd if given (with what to call before the VM stops for it).
    pub fn new(
        reset: EventFd,
        signal: Option<&EventFd>,
        latch: Arc<ExitLatch>,
        snapshot: Option<(EventFd, Box<dyn Fn() + Send>)>,
    ) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Run)?;
        let control = Control {
            reset,
            signal: signal
                .map(EventFd::try_clone)
                .transpose()
                .map_err(EventLoopError::Create)?,
            exit_evt: latch
                .eventfd()
                .try_clone()
                .map_err(EventLoopError::Create)?,
            latch: latch.clone(),
            snapshot,
        };
        manager.add_subscriber(Arc::new(Mutex::new(control)));
        Ok(EventLoop { manager, latch })
    }

    /// Adds a device subscriber (e.g. a virtio queue handler).
    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.manager.add_subscriber(s);
    }

    /// Dispatches events until some party records an exit reason.
    pub fn run_until_exit(&mut self) -> Result<VmExit, EventLoopError> {
        loop {
            if let Some(r) = self.latch.get() {
                return Ok(r);
            }
            match self.manager.run_with_timeout(1000) {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(EventLoopError::Run(e)),
            }
        }
    }
}

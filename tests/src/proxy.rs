//! A TCP proxy on loopback that injects network faults between a process and a server (in the
//! chaos tests: one worker and its Redis), switchable while traffic flows.
//!
//! - [`Mode::Pass`] forwards bytes both ways.
//! - [`Mode::Delay`] holds every chunk read from either side for a while before forwarding it.
//! - [`Mode::Drop`] resets every open connection (RST, not FIN) and resets each new one as soon
//!   as it is accepted, until the mode changes.
//! - [`Mode::Freeze`] keeps every connection open but stops forwarding in both directions, as a
//!   partition that drops packets silently would: no RST, no FIN, the peers just hear nothing.
//!   New connections are accepted and then frozen too. Bytes sent meanwhile wait in the socket
//!   buffers and are forwarded once the mode changes back, as TCP would retransmit them once a
//!   partition heals.
//!
//! The proxy uses plain threads (an acceptor and two per connection), each waking at least
//! every [`TICK`] to see mode changes, so a switch takes effect within a few milliseconds. It
//! stops and closes every connection when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How often an idle proxy thread looks at the mode and the stop flag.
pub const TICK: Duration = Duration::from_millis(5);

/// How long connecting to the target may take before the client's connection is reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does with traffic; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways as they come.
    Pass,
    /// Forward each chunk after holding it this long.
    Delay(Duration),
    /// Reset every connection, open or new.
    Drop,
    /// Forward nothing, close nothing.
    Freeze,
}

/// The mode and how many times [`Mode::Drop`] was switched on: each connection remembers the
/// count it was opened under, so one open before the latest drop is reset even if the mode has
/// already moved on by the time its thread looks.
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    drops: u64,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    stop: AtomicBool,
    accepted: AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn state(&self) -> State {
        *lock(&self.state)
    }

    /// Whether a connection opened under drop count `drops` must end now.
    fn must_end(&self, drops: u64) -> bool {
        self.stop.load(Ordering::Relaxed) || self.state().drops != drops
    }
}

/// A running fault proxy; see the module documentation. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in [`Mode::Pass`] on a free loopback port, forwarding to
    /// `127.0.0.1:target_port`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub fn start(target_port: u16) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("the proxy cannot bind a loopback port")?;
        // Non-blocking, so the acceptor notices the stop flag between connections.
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            state: Mutex::new(State {
                mode: Mode::Pass,
                drops: 0,
            }),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            pumps: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, for a Redis client that should go through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode; every connection sees it within a few milliseconds.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = lock(&self.shared.state);
        if mode == Mode::Drop && state.mode != Mode::Drop {
            state.drops += 1;
        }
        state.mode = mode;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.state().mode
    }

    /// How many connections the proxy has accepted, including those it reset at once.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // The acceptor has stopped, so no pump is added after this.
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(TICK);
                continue;
            }
            // A connection that failed before we took it (e.g. reset by its client).
            Err(_) => continue,
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let state = shared.state();
        if state.mode == Mode::Drop {
            reset(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            reset(&client);
            continue;
        };
        if let Err(err) = spawn_pumps(shared, client, server, state.drops) {
            // Out of threads: the test is broken anyway; say so rather than hang.
            eprintln!("fault proxy: cannot start forwarding threads: {err}");
        }
    }
}

/// Starts the two threads that forward one connection, one per direction.
fn spawn_pumps(
    shared: &Arc<Shared>,
    client: TcpStream,
    server: TcpStream,
    drops: u64,
) -> anyhow::Result<()> {
    client.set_nonblocking(false)?;
    for stream in [&client, &server] {
        // Short timeouts, so neither a read nor a write keeps a thread from seeing a new mode.
        stream.set_read_timeout(Some(TICK))?;
        stream.set_write_timeout(Some(TICK))?;
        let _ = stream.set_nodelay(true);
    }
    let directions = [(client.try_clone()?, server.try_clone()?), (server, client)];
    let mut pumps = lock(&shared.pumps);
    // Finished pumps are joined here, so a long test does not pile up handles.
    let (finished, running): (Vec<_>, Vec<_>) = pumps.drain(..).partition(JoinHandle::is_finished);
    *pumps = running;
    for pump in finished {
        let _ = pump.join();
    }
    for (from, to) in directions {
        let shared = shared.clone();
        pumps.push(
            std::thread::Builder::new()
                .name("proxy-pump".to_owned())
                .spawn(move || pump(&shared, &from, &to, drops))?,
        );
    }
    Ok(())
}

/// Forwards bytes from `from` to `to` according to the mode until either side closes, the
/// connection is dropped or the proxy stops.
fn pump(shared: &Shared, from: &TcpStream, to: &TcpStream, drops: u64) {
    let mut buffer = vec![0_u8; 64 << 10];
    loop {
        if shared.must_end(drops) {
            break;
        }
        if shared.state().mode == Mode::Freeze {
            // Not even reading: the bytes stay in the kernel's buffers, and the sender's
            // window fills as it would on a dead link.
            std::thread::sleep(TICK);
            continue;
        }
        let n = match (&*from).read(&mut buffer) {
            Ok(0) => {
                // Pass a clean close on; the other direction may still carry a reply.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(err) if is_timeout(&err) => continue,
            Err(_) => break,
        };
        if !hold(shared, drops) || !write_all(shared, to, &buffer[..n], drops) {
            break;
        }
    }
    // Dropped, stopped or broken: reset both sides. Each pump resets its own handles; the
    // RST goes out when the last handle of a socket closes.
    reset(from);
    reset(to);
}

/// Holds a chunk that was just read for as long as the mode says: the delay, or until a freeze
/// ends. Returns false when the connection must end instead.
fn hold(shared: &Shared, drops: u64) -> bool {
    if let Mode::Delay(delay) = shared.state().mode {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shared.must_end(drops) {
                return false;
            }
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
    }
    while shared.state().mode == Mode::Freeze {
        if shared.must_end(drops) {
            return false;
        }
        std::thread::sleep(TICK);
    }
    !shared.must_end(drops)
}

/// Writes all of `bytes`, a short timeout at a time so a stuck receiver cannot hide a mode
/// change. Returns false when the connection must end.
fn write_all(shared: &Shared, to: &TcpStream, mut bytes: &[u8], drops: u64) -> bool {
    while !bytes.is_empty() {
        if shared.must_end(drops) {
            return false;
        }
        match (&*to).write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(err) if is_timeout(&err) => {}
            Err(_) => return false,
        }
    }
    true
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Makes the socket's close send an RST instead of a FIN, and closes our side of it.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    // Reads and writes on the other handles of this socket fail from now on; the RST itself
    // goes out when the last handle is dropped.
    let _ = stream.shutdown(Shutdown::Read);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked holding the lock left a plain value behind; keep using it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a test waits for something that must happen.
    const WITHIN: Duration = Duration::from_secs(10);
    /// How long a test listens for something that must not happen.
    const QUIET: Duration = Duration::from_millis(300);

    /// An echo server on loopback that serves for at most `WITHIN` in all.
    fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let deadline = Instant::now() + WITHIN;
            while Instant::now() < deadline {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(TICK);
                    continue;
                };
                std::thread::spawn(move || echo(stream, deadline));
            }
        });
        port
    }

    fn echo(stream: TcpStream, deadline: Instant) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(TICK)).unwrap();
        let mut buffer = [0_u8; 1024];
        while Instant::now() < deadline {
            match (&stream).read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    if (&stream).write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
                Err(err) if is_timeout(&err) => {}
                Err(_) => return,
            }
        }
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        stream.set_read_timeout(Some(WITHIN)).unwrap();
        stream
    }

    /// Sends `text` and reads back as many bytes.
    fn round_trip(mut stream: &TcpStream, text: &str) -> std::io::Result<String> {
        stream.write_all(text.as_bytes())?;
        let mut reply = vec![0_u8; text.len()];
        stream.read_exact(&mut reply)?;
        Ok(String::from_utf8(reply).unwrap())
    }

    /// Whether nothing arrives on `stream` for `QUIET`, and it stays open.
    fn hears_nothing(mut stream: &TcpStream) -> bool {
        stream.set_read_timeout(Some(QUIET)).unwrap();
        let mut byte = [0_u8; 1];
        let quiet = matches!(stream.read(&mut byte), Err(err) if is_timeout(&err));
        stream.set_read_timeout(Some(WITHIN)).unwrap();
        quiet
    }

    /// Whether the connection ends (reset or closed) rather than carry `text` back.
    fn is_cut(mut stream: &TcpStream) -> bool {
        // A write may still succeed into the local buffer; the read must fail or see the end.
        let _ = stream.write_all(b"ping");
        let mut byte = [0_u8; 1];
        matches!(stream.read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn pass_forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let stream = connect(&proxy);
        assert_eq!(round_trip(&stream, "hello").unwrap(), "hello");
        assert_eq!(round_trip(&stream, "again").unwrap(), "again");
        assert_eq!(proxy.accepted(), 1);
    }

    #[test]
    fn delay_holds_each_chunk() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let stream = connect(&proxy);
        let delay = Duration::from_millis(200);
        proxy.set_mode(Mode::Delay(delay));
        let started = Instant::now();
        assert_eq!(round_trip(&stream, "slow").unwrap(), "slow");
        // Held once on the way there and once on the way back: a lower bound, whatever the
        // machine's speed.
        assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());
    }

    #[test]
    fn drop_resets_open_and_new_connections_until_switched_back() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let open = connect(&proxy);
        assert_eq!(round_trip(&open, "before").unwrap(), "before");

        proxy.set_mode(Mode::Drop);
        assert!(is_cut(&open), "the open connection survived the drop");
        let accepted = proxy.accepted();
        // The connect itself may succeed (the listener is still there) but nothing passes.
        if let Ok(new) = TcpStream::connect(("127.0.0.1", proxy.port())) {
            new.set_read_timeout(Some(WITHIN)).unwrap();
            assert!(is_cut(&new), "a new connection was served during the drop");
        }

        proxy.set_mode(Mode::Pass);
        let after = connect(&proxy);
        assert_eq!(round_trip(&after, "after").unwrap(), "after");
        assert!(proxy.accepted() > accepted);
    }

    #[test]
    fn a_quick_drop_and_pass_still_resets_open_connections() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let open = connect(&proxy);
        assert_eq!(round_trip(&open, "before").unwrap(), "before");
        // Back to Pass before any thread can have looked at the mode.
        proxy.set_mode(Mode::Drop);
        proxy.set_mode(Mode::Pass);
        assert!(is_cut(&open), "the open connection survived the drop");
    }

    #[test]
    fn freeze_holds_bytes_without_closing_and_releases_them_after() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut open = connect(&proxy);
        assert_eq!(round_trip(&open, "warm").unwrap(), "warm");

        proxy.set_mode(Mode::Freeze);
        open.write_all(b"held").unwrap();
        assert!(hears_nothing(&open), "bytes passed a frozen proxy");
        let mut new = connect(&proxy);
        new.write_all(b"late").unwrap();
        assert!(
            hears_nothing(&new),
            "a new connection was served while frozen"
        );

        proxy.set_mode(Mode::Pass);
        let mut reply = [0_u8; 4];
        open.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"held");
        new.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"late");
        assert_eq!(proxy.mode(), Mode::Pass);
    }

    #[test]
    fn dropping_the_proxy_closes_its_port_and_connections() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let port = proxy.port();
        let open = connect(&proxy);
        assert_eq!(round_trip(&open, "x").unwrap(), "x");
        drop(proxy);
        assert!(is_cut(&open), "a connection outlived the proxy");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

//! A loopback link emulator for `make bench` (scripts/bench-net.sh): a TCP proxy that
//! adds a round-trip delay and a bandwidth cap, and counts what crosses it.
//!
//! netem is not available in this kernel, so this is how the bench measures what users
//! feel between a homelab builder and a bucket across the internet. Each direction is one
//! shared link (all connections share the bandwidth, as they share a real uplink): a chunk
//! read at time t is delivered at max(t + rtt/2, when the link is free) and then occupies
//! the link for len * 8 / rate seconds. Buffering per connection and direction is bounded
//! (twice the bandwidth-delay product, at least 256 KiB), so TCP flow control still
//! reaches the sender. On a real link connect() returns after one round trip; here it
//! returns at once, so the client's first bytes leave one RTT later.
//!
//! With --count-http the proxy also counts HTTP/1.1 requests in the client-to-server
//! direction (request line, headers, Content-Length body; narpush sends no chunked
//! bodies): put it where the traffic is plaintext (behind the TLS terminator).
//!
//! Counters (connections, requests, bytes each way) are written as JSON to --stats every
//! second. Without unsafe code a signal handler is out of reach, so the clean stop is a
//! file: once --stop-file exists (checked every 20 ms) the counters are written a last
//! time and the proxy exits 0; SIGTERM still ends it, without that last write. Listens on
//! 127.0.0.1 only.
//!
//! Threads: per connection, a reader and a writer for each direction (the reader
//! schedules each chunk on the shared link and queues it; the writer sleeps until the
//! chunk's delivery time and writes it), so a slow receiver holds up only its own
//! connection, and nothing spins: every thread blocks in read, write, a condition
//! variable or a sleep until the next delivery. Without delay and cap (the request
//! counter) each direction is one thread that writes what it reads. Threads are kept for
//! the next connection when theirs ends.
//!
//! ```text
//! cargo build --release --example netproxy
//! target/release/examples/netproxy --upstream 127.0.0.1:9000 [--listen 0] [--port-file F]
//!     [--rtt-ms 25] [--mbit 100] [--count-http] [--stats F] [--stop-file F]
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use std::{env, fs, process, thread};

/// Bytes read from a socket at a time, as the Python emulator did.
const CHUNK: usize = 16384;
/// The least buffering per connection and direction.
const MIN_BUFFER: usize = 262144;
/// How often the stop file is looked for.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often the counters are rewritten while running.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Stack for the per-connection threads: they hold a few locals; the chunk is on the heap.
const THREAD_STACK: usize = 128 * 1024;

const USAGE: &str = "usage: netproxy --upstream HOST:PORT [--listen PORT] [--port-file F] \
[--rtt-ms MS] [--mbit MBIT] [--count-http] [--stats F] [--stop-file F]";

/// The command line, as bench/netproxy.py took it, plus --stop-file.
struct Options {
    upstream: SocketAddr,
    listen: u16,
    port_file: Option<PathBuf>,
    rtt_ms: f64,
    mbit: f64,
    count_http: bool,
    stats: Option<PathBuf>,
    stop_file: Option<PathBuf>,
}

fn parse_args() -> Result<Options, String> {
    let mut upstream = None;
    let mut o = Options {
        upstream: SocketAddr::from(([127, 0, 0, 1], 0)),
        listen: 0,
        port_file: None,
        rtt_ms: 0.0,
        mbit: 0.0,
        count_http: false,
        stats: None,
        stop_file: None,
    };
    let mut args = env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if name == "--count-http" {
            o.count_http = true;
            continue;
        }
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            process::exit(0);
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value")),
        };
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{name} wants a number of at least 0, not {v:?}"))
        };
        match name.as_str() {
            "--upstream" => upstream = Some(value),
            "--listen" => {
                o.listen = value
                    .parse()
                    .map_err(|_| format!("--listen wants a port number, not {value:?}"))?
            }
            "--port-file" => o.port_file = Some(value.into()),
            "--rtt-ms" => o.rtt_ms = number(&value)?,
            "--mbit" => o.mbit = number(&value)?,
            "--stats" => o.stats = Some(value.into()),
            "--stop-file" => o.stop_file = Some(value.into()),
            _ => return Err(format!("unknown option {name}")),
        }
    }
    let upstream = upstream.ok_or("--upstream HOST:PORT is required")?;
    o.upstream = upstream
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve upstream {upstream:?}; give HOST:PORT"))?;
    Ok(o)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One direction of the emulated link, shared by all connections.
struct Link {
    /// Bits per second; 0 = unlimited.
    rate: f64,
    one_way: Duration,
    state: Mutex<LinkState>,
}

struct LinkState {
    free_at: Instant,
    bytes: u64,
}

impl Link {
    fn new(rate: f64, one_way: Duration) -> Link {
        let state = LinkState {
            free_at: Instant::now(),
            bytes: 0,
        };
        Link {
            rate,
            one_way,
            state: Mutex::new(state),
        }
    }

    /// When a chunk of n bytes read at `now` arrives at the far end.
    fn schedule(&self, now: Instant, n: usize) -> Instant {
        let mut s = lock(&self.state);
        let mut at = (now + self.one_way).max(s.free_at);
        if self.rate > 0.0 {
            s.free_at = at + Duration::from_secs_f64(n as f64 * 8.0 / self.rate);
            at = s.free_at;
        }
        s.bytes += n as u64;
        at
    }

    /// No delay and no cap: chunks go on as soon as they are read.
    fn is_instant(&self) -> bool {
        self.rate == 0.0 && self.one_way.is_zero()
    }

    fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }
}

/// The counters the proxy writes to --stats (bytes live in the links).
#[derive(Default)]
struct Stats {
    connections: u64,
    requests: u64,
    requests_by_method: BTreeMap<String, u64>,
}

/// Counts requests in a client-to-server HTTP/1.1 byte stream.
struct HttpCounter {
    stats: Arc<Mutex<Stats>>,
    /// Bytes of a request head not complete yet.
    head: Vec<u8>,
    body_left: u64,
}

impl HttpCounter {
    fn feed(&mut self, mut data: &[u8]) {
        if self.body_left > 0 {
            let take = data.len().min(self.body_left as usize);
            self.body_left -= take as u64;
            data = &data[take..];
        }
        if data.is_empty() {
            return;
        }
        self.head.extend_from_slice(data);
        let mut pos = 0;
        while let Some(end) = find(&self.head[pos..], b"\r\n\r\n") {
            self.body_left = count_request(&self.stats, &self.head[pos..pos + end]);
            pos += end + 4;
            let take = (self.head.len() - pos).min(self.body_left as usize);
            self.body_left -= take as u64;
            pos += take;
        }
        self.head.drain(..pos);
        if self.head.len() > 65536 {
            self.head = Vec::new(); // not HTTP; stop counting this stream
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Counts one request head (without its blank line); returns its Content-Length.
fn count_request(stats: &Mutex<Stats>, head: &[u8]) -> u64 {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let method = first.split(|&b| b == b' ').next().unwrap_or_default();
    let method: String = method
        .iter()
        .map(|&b| if b.is_ascii() { b as char } else { '\u{fffd}' })
        .collect();
    let mut length = 0;
    for line in lines {
        let (key, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        if key.trim_ascii().eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value.trim_ascii())
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    let mut s = lock(stats);
    s.requests += 1;
    *s.requests_by_method.entry(method).or_insert(0) += 1;
    length
}

/// The chunks of one connection direction between its reader and its writer.
struct Pipe {
    state: Mutex<PipeState>,
    /// Signalled when a chunk is queued or the reader is done.
    ready: Condvar,
    /// Signalled when a chunk has been delivered (or the writer gave up).
    room: Condvar,
    limit: usize,
}

#[derive(Default)]
struct PipeState {
    queue: VecDeque<(Instant, Vec<u8>)>,
    buffered: usize,
    /// The reader saw the end of its stream (or an error).
    closed: bool,
    /// The writer failed; what is read from now on is dropped.
    broken: bool,
}

impl Pipe {
    fn new(limit: usize) -> Pipe {
        Pipe {
            state: Mutex::new(PipeState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            limit,
        }
    }
}

/// The next chunk of `src` into `buf`, shown to the counter; None at the end or an error.
fn read_chunk(
    src: &mut TcpStream,
    buf: &mut [u8],
    counter: &mut Option<HttpCounter>,
) -> Option<usize> {
    loop {
        match src.read(buf) {
            Ok(0) => return None,
            Ok(n) => {
                if let Some(c) = counter.as_mut() {
                    c.feed(&buf[..n]);
                }
                return Some(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Reads `src` and queues each chunk with its delivery time on `link`, none before
/// `not_before`; stops reading while `limit` bytes wait, so flow control reaches the sender.
fn read_side(
    mut src: TcpStream,
    pipe: &Pipe,
    link: &Link,
    mut counter: Option<HttpCounter>,
    not_before: Instant,
) {
    let mut buf = vec![0; CHUNK];
    loop {
        {
            let mut s = lock(&pipe.state);
            while s.buffered >= pipe.limit && !s.broken {
                s = pipe.room.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let Some(n) = read_chunk(&mut src, &mut buf, &mut counter) else {
            break;
        };
        let at = link.schedule(Instant::now().max(not_before), n);
        let mut s = lock(&pipe.state);
        if !s.broken {
            s.buffered += n;
            s.queue.push_back((at, buf[..n].to_vec()));
            pipe.ready.notify_one();
        }
    }
    lock(&pipe.state).closed = true;
    pipe.ready.notify_one();
}

/// Copies `src` to `dst` as it comes, through a link without delay or cap (a plain relay
/// such as the request counter): no queue, no writer thread. Keeps reading after a
/// failed write, so the counters still see the whole stream.
fn relay(mut src: TcpStream, mut dst: TcpStream, link: &Link, mut counter: Option<HttpCounter>) {
    let mut buf = vec![0; CHUNK];
    let mut broken = false;
    while let Some(n) = read_chunk(&mut src, &mut buf, &mut counter) {
        link.schedule(Instant::now(), n);
        broken = broken || dst.write_all(&buf[..n]).is_err();
    }
    let _ = dst.shutdown(Shutdown::Write);
}

/// Writes each queued chunk to `dst` at its delivery time; at the reader's end, shuts
/// down the sending half of `dst` so the far side sees the end too.
fn write_side(mut dst: TcpStream, pipe: &Pipe) {
    loop {
        let (at, data) = {
            let mut s = lock(&pipe.state);
            loop {
                if let Some(chunk) = s.queue.pop_front() {
                    break chunk;
                }
                if s.closed {
                    drop(s);
                    let _ = dst.shutdown(Shutdown::Write);
                    return;
                }
                s = pipe.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        let ok = dst.write_all(&data).is_ok();
        let mut s = lock(&pipe.state);
        s.buffered -= data.len();
        if !ok {
            s.broken = true;
            s.queue.clear();
            s.buffered = 0;
        }
        pipe.room.notify_one();
        if !ok {
            return;
        }
    }
}

/// Everything the connections share.
struct Proxy {
    upstream: SocketAddr,
    up: Link,
    down: Link,
    limit: usize,
    count_http: bool,
    stats: Arc<Mutex<Stats>>,
    pool: Arc<Pool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that outlive their connection and take the next one's work: starting four
/// threads per connection cost more CPU than moving its bytes when every request opened
/// a connection.
struct Pool {
    /// Workers blocked on `queue`, less the jobs sent to them and not taken yet.
    idle: Mutex<usize>,
    jobs: mpsc::Sender<Job>,
    queue: Mutex<mpsc::Receiver<Job>>,
}

impl Pool {
    fn new() -> Arc<Pool> {
        let (jobs, queue) = mpsc::channel();
        Arc::new(Pool {
            idle: Mutex::new(0),
            jobs,
            queue: Mutex::new(queue),
        })
    }

    /// Runs `job` on an idle worker, or on a new one; false if no thread could start.
    fn run(self: &Arc<Pool>, job: impl FnOnce() + Send + 'static) -> bool {
        let job: Job = Box::new(job);
        {
            let mut idle = lock(&self.idle);
            if *idle > 0 {
                *idle -= 1;
                return self.jobs.send(job).is_ok();
            }
        }
        let pool = self.clone();
        let spawned = thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                job();
                pool.work();
            });
        if let Err(e) = &spawned {
            eprintln!("netproxy: cannot start a thread: {e}");
        }
        spawned.is_ok()
    }

    fn work(&self) {
        loop {
            *lock(&self.idle) += 1;
            let job = lock(&self.queue).recv();
            match job {
                Ok(job) => job(),
                Err(_) => return,
            }
        }
    }
}

/// One client connection: connect upstream, then run the four sides.
fn handle(proxy: Arc<Proxy>, client: TcpStream) {
    lock(&proxy.stats).connections += 1;
    let opened = Instant::now() + 2 * proxy.up.one_way;
    let Ok(server) = TcpStream::connect(proxy.upstream) else {
        return; // dropping the client closes it
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let counter = proxy.count_http.then(|| HttpCounter {
        stats: proxy.stats.clone(),
        head: Vec::new(),
        body_left: 0,
    });
    let clones = (|| Ok::<_, std::io::Error>((client.try_clone()?, server.try_clone()?)))();
    let Ok((client_w, server_w)) = clones else {
        return;
    };
    if proxy.up.is_instant() {
        let p = proxy.clone();
        if !proxy
            .pool
            .run(move || relay(server, client_w, &p.down, None))
        {
            return;
        }
        return relay(client, server_w, &proxy.up, counter);
    }
    let upward = Arc::new(Pipe::new(proxy.limit));
    let downward = Arc::new(Pipe::new(proxy.limit));
    // If a thread cannot start, ending both sockets ends the sides already running.
    let give_up = |c: &TcpStream, s: &TcpStream| {
        let _ = c.shutdown(Shutdown::Both);
        let _ = s.shutdown(Shutdown::Both);
    };
    let (p, d, s) = (proxy.clone(), downward.clone(), server.try_clone());
    let Ok(s) = s else { return };
    if !proxy
        .pool
        .run(move || read_side(s, &d, &p.down, None, Instant::now()))
    {
        return give_up(&client, &server);
    }
    let d = downward;
    if !proxy.pool.run(move || write_side(client_w, &d)) {
        return give_up(&client, &server);
    }
    let u = upward.clone();
    if !proxy.pool.run(move || write_side(server_w, &u)) {
        return give_up(&client, &server);
    }
    read_side(client, &upward, &proxy.up, counter, opened);
}

/// Writes `text` to `path` through a temporary file, so readers never see half of it.
fn write_atomic(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let result = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        eprintln!("netproxy: cannot write {}: {e}", path.display());
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The counters in the shape bench/netproxy.py wrote them.
fn stats_json(proxy: &Proxy, o: &Options) -> String {
    let s = lock(&proxy.stats);
    let methods: Vec<String> = s
        .requests_by_method
        .iter()
        .map(|(m, n)| format!("{}: {n}", json_string(m)))
        .collect();
    format!(
        "{{\"connections\": {}, \"requests\": {}, \"requests_by_method\": {{{}}}, \
         \"bytes_up\": {}, \"bytes_down\": {}, \"rtt_ms\": {:?}, \"mbit\": {:?}}}\n",
        s.connections,
        s.requests,
        methods.join(", "),
        proxy.up.bytes(),
        proxy.down.bytes(),
        o.rtt_ms,
        o.mbit
    )
}

/// Rewrites the counters every second; writes them a last time and exits once the
/// stop file exists.
fn watch(proxy: Arc<Proxy>, o: Options) {
    let save = || {
        if let Some(path) = &o.stats {
            write_atomic(path, &stats_json(&proxy, &o));
        }
    };
    let mut last = Instant::now();
    loop {
        let wait = if o.stop_file.is_some() {
            STOP_POLL
        } else {
            STATS_EVERY
        };
        thread::sleep(wait);
        if o.stop_file.as_deref().is_some_and(Path::exists) {
            save();
            process::exit(0);
        }
        if last.elapsed() >= STATS_EVERY {
            save();
            last = Instant::now();
        }
    }
}

fn main() {
    let o = parse_args().unwrap_or_else(|e| {
        eprintln!("netproxy: {e}\n{USAGE}");
        process::exit(2);
    });
    let one_way = Duration::from_secs_f64(o.rtt_ms / 2000.0);
    let rate = o.mbit * 1e6;
    let limit = MIN_BUFFER.max((2.0 * rate / 8.0 * o.rtt_ms / 1000.0) as usize);
    let proxy = Arc::new(Proxy {
        upstream: o.upstream,
        up: Link::new(rate, one_way),
        down: Link::new(rate, one_way),
        limit,
        count_http: o.count_http,
        stats: Arc::default(),
        pool: Pool::new(),
    });
    let listener = TcpListener::bind(("127.0.0.1", o.listen)).unwrap_or_else(|e| {
        eprintln!(
            "netproxy: cannot listen on 127.0.0.1:{}: {e}; pick a free port",
            o.listen
        );
        process::exit(1);
    });
    if let Some(path) = &o.port_file {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        write_atomic(path, &format!("{port}\n"));
    }
    let p = proxy.clone();
    thread::spawn(move || watch(p, o));
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                let p = proxy.clone();
                proxy.pool.run(move || handle(p, client));
            }
            Err(e) => {
                eprintln!("netproxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

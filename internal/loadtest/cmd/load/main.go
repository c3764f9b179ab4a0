// Command load drives one benchmark figure against one WebSocket URL and
// prints the result as one JSON line, so that a script can run it against
// several proxies in turn and aggregate the lines (see cmd/report).
//
// Modes:
//
//	echo       -conns N closed-loop connections, each sends -size bytes and
//	           waits for the echo before sending again: messages/s
//	latency    one connection, -size byte round trips: p50/p90/p99
//	bulk       -conns connections (4), 64 KiB binary frames sent and received
//	           concurrently on each: MB/s received (1 MB = 10^6 bytes)
//	handshake  -conns workers (8) open a connection, close it with a close
//	           handshake and wait for the server's FIN: handshakes/s
//	idle       opens -conns connections (5000), measures the memory of the
//	           processes in -pid before and after, then checks that every
//	           connection still echoes: KB per tunnel
//
// A wss:// URL speaks TLS to the target: -ca names the PEM certificate to
// trust (cmd/tlscert's cert.pem). Every connection makes a full TLS 1.3
// handshake (no session resumption) with X25519, the one key exchange every
// peer offers, so all TLS fronts do the same work per handshake.
//
// Example:
//
//	load -mode echo -conns 50 -url ws://127.0.0.1:9201/ -target wsproxy
//	load -mode handshake -url wss://127.0.0.1:9211/ -ca cert.pem -target wsproxy-tls
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Result is one line of output. Fields that do not apply to a mode are
// left out.
type Result struct {
	Mode     string  `json:"mode"`
	Target   string  `json:"target"`
	Round    int     `json:"round"`
	Conns    int     `json:"conns"`
	Size     int     `json:"size"`
	Seconds  float64 `json:"seconds,omitempty"`
	Errors   int64   `json:"errors"`
	FirstErr string  `json:"first_err,omitempty"`
	TLS      string  `json:"tls,omitempty"` // wss: version, cipher suite and key exchange of one connection

	MsgsPerSec       float64 `json:"msgs_per_sec,omitempty"`
	P50us            float64 `json:"p50_us,omitempty"`
	P90us            float64 `json:"p90_us,omitempty"`
	P99us            float64 `json:"p99_us,omitempty"`
	MBps             float64 `json:"mb_per_sec,omitempty"`
	HandshakesPerSec float64 `json:"handshakes_per_sec,omitempty"`

	// The proxy's own CPU time (user+system of -pid) over the measured
	// window: less sensitive to a busy machine than rates are.
	ProxyCPUSeconds float64 `json:"proxy_cpu_s,omitempty"`
	CPUusPerMsg     float64 `json:"cpu_us_per_msg,omitempty"`       // echo, latency: per round trip
	CPUmsPerMB      float64 `json:"cpu_ms_per_mb,omitempty"`        // bulk: per MB received
	CPUusPerHS      float64 `json:"cpu_us_per_handshake,omitempty"` // handshake
	// The same split and widened, per unit of the mode's figure above: the
	// proxy's user and system time, the backend's (-backend-pid) and the
	// load tool's own, all over the same window.
	ProxyUserPerUnit  float64 `json:"proxy_user_per_unit,omitempty"`
	ProxySysPerUnit   float64 `json:"proxy_sys_per_unit,omitempty"`
	BackendCPUSeconds float64 `json:"backend_cpu_s,omitempty"`
	BackendPerUnit    float64 `json:"backend_cpu_per_unit,omitempty"`
	ClientCPUSeconds  float64 `json:"client_cpu_s,omitempty"`
	ClientPerUnit     float64 `json:"client_cpu_per_unit,omitempty"`

	RSSBeforeKB     int64   `json:"rss_before_kb,omitempty"`
	RSSAfterKB      int64   `json:"rss_after_kb,omitempty"`
	PssBeforeKB     int64   `json:"pss_before_kb,omitempty"`
	PssAfterKB      int64   `json:"pss_after_kb,omitempty"`
	RSSEchoedKB     int64   `json:"rss_echoed_kb,omitempty"`
	KBPerTunnel     float64 `json:"kb_per_tunnel,omitempty"`
	PssKBPerTunnel  float64 `json:"pss_kb_per_tunnel,omitempty"`
	EchoKBPerTunnel float64 `json:"echoed_kb_per_tunnel,omitempty"`
	Opened          int     `json:"opened,omitempty"`
	Echoed          int     `json:"echoed,omitempty"`
}

type config struct {
	url      string
	conns    int
	size     int
	duration time.Duration
	warmup   time.Duration
	settle   time.Duration
	pids     string
	pidList  []int
	// backendPids are the backend's processes, whose CPU time is reported
	// beside the proxy's.
	backendPids []int
	tls         *tls.Config // wss: trusts -ca
	// idle: URLs fetched while the connections are open (pprof endpoints),
	// after opening them and after one echo each, into profileDir
	profiles   profileFlag
	profileDir string
}

// profileFlag collects -profile name=URL flags.
type profileFlag []string

func (f *profileFlag) String() string     { return strings.Join(*f, " ") }
func (f *profileFlag) Set(s string) error { *f = append(*f, s); return nil }

func main() {
	var (
		cfg    config
		mode   = flag.String("mode", "echo", "echo, latency, bulk, handshake or idle")
		target = flag.String("target", "", "label of the target in the output")
		round  = flag.Int("round", 0, "round number, copied to the output")
	)
	flag.StringVar(&cfg.url, "url", "ws://127.0.0.1:9200/", "WebSocket URL")
	flag.IntVar(&cfg.conns, "conns", 0, "connections or workers (default per mode: echo 50, latency 1, bulk 4, handshake 8, idle 5000)")
	flag.IntVar(&cfg.size, "size", 0, "message size (default 128, bulk 65536)")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured time")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured time before it")
	flag.DurationVar(&cfg.settle, "settle", 3*time.Second, "idle: wait after opening before measuring memory")
	flag.StringVar(&cfg.pids, "pid", "", "comma-separated pids of the proxy: idle sums their memory, other modes their CPU time")
	backendPids := flag.String("backend-pid", "", "comma-separated pids of the backend: other modes than idle report their CPU time too")
	flag.Var(&cfg.profiles, "profile", "idle: name=URL fetched into -profile-dir/open-name and echoed-name (repeatable)")
	flag.StringVar(&cfg.profileDir, "profile-dir", ".", "idle: where -profile answers go")
	caFile := flag.String("ca", "", "wss: PEM certificate to trust instead of the system's roots")
	flag.Parse()

	defaults := map[string][2]int{"echo": {50, 128}, "latency": {1, 128}, "bulk": {4, 64 << 10}, "handshake": {8, 0}, "idle": {5000, 128}}
	d, ok := defaults[*mode]
	if !ok {
		fmt.Fprintf(os.Stderr, "load: unknown mode %q\n", *mode)
		os.Exit(2)
	}
	if cfg.conns == 0 {
		cfg.conns = d[0]
	}
	if cfg.size == 0 {
		cfg.size = d[1]
	}
	res := Result{Mode: *mode, Target: *target, Round: *round, Conns: cfg.conns, Size: cfg.size}
	var err error
	if cfg.tls, err = clientTLS(*caFile); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	if cfg.pids != "" {
		cfg.pidList, err = parsePids(cfg.pids)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(2)
		}
	}
	if *backendPids != "" {
		cfg.backendPids, err = parsePids(*backendPids)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(2)
		}
	}
	switch *mode {
	case "echo":
		err = runEcho(cfg, &res)
	case "latency":
		err = runLatency(cfg, &res)
	case "bulk":
		err = runBulk(cfg, &res)
	case "handshake":
		err = runHandshake(cfg, &res)
	case "idle":
		err = runIdle(cfg, &res)
	}
	if err != nil {
		res.Errors++
		res.FirstErr = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	if err != nil {
		os.Exit(1)
	}
}

// errs counts errors and keeps the first one.
type errs struct {
	n     atomic.Int64
	mu    sync.Mutex
	first error
}

func (e *errs) add(err error) {
	if e.n.Add(1) == 1 {
		e.mu.Lock()
		e.first = err
		e.mu.Unlock()
	}
}

func (e *errs) fill(r *Result) {
	r.Errors += e.n.Load()
	e.mu.Lock()
	if e.first != nil && r.FirstErr == "" {
		r.FirstErr = e.first.Error()
	}
	e.mu.Unlock()
}

// clientTLS returns the TLS settings of every wss connection: the roots
// in caFile (the system's when empty), TLS 1.3, X25519 and no session
// cache, so that every handshake is a full one.
func clientTLS(caFile string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519}}
	if caFile == "" {
		return conf, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	conf.RootCAs = x509.NewCertPool()
	if !conf.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", caFile)
	}
	return conf, nil
}

// dialer returns a client whose write buffer holds a whole message of
// size bytes, so every message leaves as one frame.
func dialer(cfg config, size int) *websocket.Dialer {
	buf := max(size, 1024)
	return &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   buf,
		WriteBufferSize:  buf,
		NetDialContext:   (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSClientConfig:  cfg.tls,
	}
}

// tlsInfo describes the TLS session of c, or returns "" for plain ws.
func tlsInfo(c *websocket.Conn) string {
	tc, ok := c.NetConn().(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	return fmt.Sprintf("%s %s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
}

func dial(d *websocket.Dialer, url string) (*websocket.Conn, error) {
	c, resp, err := d.Dial(url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (status %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	return c, nil
}

// roundTrip sends msg and reads the echo into buf.
func roundTrip(c *websocket.Conn, msg, buf []byte) error {
	if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		return err
	}
	_, r, err := c.NextReader()
	if err != nil {
		return err
	}
	n, err := io.ReadFull(r, buf)
	if err != nil {
		return err
	}
	if n != len(msg) {
		return fmt.Errorf("echo of %d bytes, want %d", n, len(msg))
	}
	if _, err := r.Read(buf[:1]); err != io.EOF {
		return errors.New("echo longer than the message")
	}
	return nil
}

// closeConn runs the close handshake and waits for the server's FIN, so the
// TIME_WAIT state stays on the server side (RFC 6455 §7.1.1).
func closeConn(c *websocket.Conn) error {
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := c.WriteControl(websocket.CloseMessage, msg, deadline); err != nil {
		return err
	}
	c.SetReadDeadline(deadline)
	for {
		if _, _, err := c.NextReader(); err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return fmt.Errorf("close handshake: %w", err)
			}
			break
		}
	}
	var b [1]byte
	if _, err := c.NetConn().Read(b[:]); err != io.EOF {
		return fmt.Errorf("waiting for the server's FIN: %v", err)
	}
	return nil
}

func openAll(d *websocket.Dialer, url string, n, parallel int) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, n)
	var next atomic.Int64
	var e errs
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || e.n.Load() > 0 {
					return
				}
				c, err := dial(d, url)
				if err != nil {
					e.add(fmt.Errorf("connection %d: %w", i, err))
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if e.first != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, e.first
	}
	return conns, nil
}

// window runs until warmup+duration and returns the counter's growth over
// the measured part, the measured seconds and the CPU time used meanwhile.
func window(cfg config, count *atomic.Int64) (n int64, secs float64, u usage) {
	time.Sleep(cfg.warmup)
	m := startMeter(cfg)
	n0, t0 := count.Load(), time.Now()
	time.Sleep(cfg.duration)
	n, secs = count.Load()-n0, time.Since(t0).Seconds()
	return n, secs, m.stop()
}

// perUnit returns cpu seconds per unit of n, scaled, or 0 when unknown.
func perUnit(cpu float64, n int64, scale float64) float64 {
	if cpu == 0 || n == 0 {
		return 0
	}
	return cpu / float64(n) * scale
}

func runEcho(cfg config, res *Result) error {
	conns, err := openAll(dialer(cfg, cfg.size), cfg.url, cfg.conns, 16)
	if err != nil {
		return err
	}
	res.TLS = tlsInfo(conns[0])
	var count atomic.Int64
	var stop atomic.Bool
	var e errs
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			msg, buf := make([]byte, cfg.size), make([]byte, cfg.size)
			for !stop.Load() {
				if err := roundTrip(c, msg, buf); err != nil {
					e.add(err)
					return
				}
				count.Add(1)
			}
		})
	}
	n, secs, u := window(cfg, &count)
	stop.Store(true)
	wg.Wait()
	closeAll(conns, &e)
	res.Seconds = secs
	res.MsgsPerSec = float64(n) / secs
	res.CPUusPerMsg = res.setCPU(u, n, 1e6)
	e.fill(res)
	return nil
}

func closeAll(conns []*websocket.Conn, e *errs) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := closeConn(c); err != nil {
				e.add(err)
			}
		})
	}
	wg.Wait()
}

func runLatency(cfg config, res *Result) error {
	c, err := dial(dialer(cfg, cfg.size), cfg.url)
	if err != nil {
		return err
	}
	msg, buf := make([]byte, cfg.size), make([]byte, cfg.size)
	for end := time.Now().Add(cfg.warmup); time.Now().Before(end); {
		if err := roundTrip(c, msg, buf); err != nil {
			return err
		}
	}
	rtts := make([]time.Duration, 0, 1<<16)
	m := startMeter(cfg)
	start := time.Now()
	for end := start.Add(cfg.duration); ; {
		t0 := time.Now()
		if err := roundTrip(c, msg, buf); err != nil {
			return err
		}
		t1 := time.Now()
		rtts = append(rtts, t1.Sub(t0))
		if t1.After(end) {
			break
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.CPUusPerMsg = res.setCPU(m.stop(), int64(len(rtts)), 1e6)
	var e errs
	if err := closeConn(c); err != nil {
		e.add(err)
	}
	slices.Sort(rtts)
	pct := func(p float64) float64 {
		return float64(rtts[int(p*float64(len(rtts)-1))].Nanoseconds()) / 1e3
	}
	res.P50us, res.P90us, res.P99us = pct(0.50), pct(0.90), pct(0.99)
	res.MsgsPerSec = float64(len(rtts)) / res.Seconds
	e.fill(res)
	return nil
}

func runBulk(cfg config, res *Result) error {
	conns, err := openAll(dialer(cfg, cfg.size), cfg.url, cfg.conns, 16)
	if err != nil {
		return err
	}
	var received atomic.Int64
	var stop atomic.Bool
	var e errs
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			msg := make([]byte, cfg.size)
			for i := range msg {
				msg[i] = byte(i)
			}
			for !stop.Load() {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					if !stop.Load() {
						e.add(fmt.Errorf("write: %w", err))
					}
					return
				}
			}
		})
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				_, r, err := c.NextReader()
				if err != nil {
					if !stop.Load() {
						e.add(fmt.Errorf("read: %w", err))
					}
					return
				}
				for {
					n, err := r.Read(buf)
					received.Add(int64(n))
					if err == io.EOF {
						break
					}
					if err != nil {
						if !stop.Load() {
							e.add(fmt.Errorf("read: %w", err))
						}
						return
					}
				}
			}
		})
	}
	n, secs, u := window(cfg, &received)
	// Streams in flight both ways cannot end with a close handshake in
	// bounded time: stop the writers, then cut the connections.
	stop.Store(true)
	for _, c := range conns {
		c.NetConn().SetDeadline(time.Now())
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	res.Seconds = secs
	res.MBps = float64(n) / 1e6 / secs
	res.CPUmsPerMB = res.setCPU(u, n, 1e9)
	e.fill(res)
	return nil
}

func runHandshake(cfg config, res *Result) error {
	d := dialer(cfg, 0)
	var count atomic.Int64
	var stop atomic.Bool
	var e errs
	var wg sync.WaitGroup
	for range cfg.conns {
		wg.Go(func() {
			for !stop.Load() {
				c, err := dial(d, cfg.url)
				if err != nil {
					e.add(err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if err := closeConn(c); err != nil {
					e.add(err)
					continue
				}
				count.Add(1)
			}
		})
	}
	n, secs, u := window(cfg, &count)
	stop.Store(true)
	wg.Wait()
	res.Seconds = secs
	res.HandshakesPerSec = float64(n) / secs
	res.CPUusPerHS = res.setCPU(u, n, 1e6)
	e.fill(res)
	return nil
}

func runIdle(cfg config, res *Result) error {
	pids := cfg.pidList
	if len(pids) == 0 {
		return fmt.Errorf("idle: -pid is required")
	}
	d := dialer(cfg, cfg.size)
	// Warm the target up so that one-time costs are not charged to tunnels.
	warm, err := openAll(d, cfg.url, 8, 8)
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var e errs
	echoAll(warm, cfg.size, &e)
	closeAll(warm, &e)
	if e.first != nil {
		return fmt.Errorf("warm-up: %w", e.first)
	}
	time.Sleep(cfg.settle)

	before, err := memory(pids)
	if err != nil {
		return err
	}
	conns, err := openAll(d, cfg.url, cfg.conns, 32)
	if err != nil {
		return err
	}
	res.Opened = len(conns)
	time.Sleep(cfg.settle)
	after, err := memory(pids)
	if err != nil {
		return err
	}
	fetchAll(cfg, "open", &e)
	res.Echoed = echoAll(conns, cfg.size, &e)
	time.Sleep(cfg.settle)
	echoed, err := memory(pids)
	if err != nil {
		return err
	}
	fetchAll(cfg, "echoed", &e)
	n := float64(cfg.conns)
	res.RSSBeforeKB, res.RSSAfterKB, res.RSSEchoedKB = before.rss, after.rss, echoed.rss
	res.PssBeforeKB, res.PssAfterKB = before.pss, after.pss
	res.KBPerTunnel = float64(after.rss-before.rss) / n
	res.PssKBPerTunnel = float64(after.pss-before.pss) / n
	res.EchoKBPerTunnel = float64(echoed.rss-before.rss) / n
	// Closing thousands of tunnels politely would take longer than the
	// measurement; the close frame tells the proxy, then the socket goes.
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "")
	for _, c := range conns {
		c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.Close()
	}
	e.fill(res)
	return nil
}

func fetchAll(cfg config, phase string, e *errs) {
	for _, p := range cfg.profiles {
		name, url, ok := strings.Cut(p, "=")
		if !ok {
			e.add(fmt.Errorf("-profile %q: want name=URL", p))
			continue
		}
		if err := fetch(url, filepath.Join(cfg.profileDir, phase+"-"+name)); err != nil {
			e.add(fmt.Errorf("profile: %w", err))
		}
	}
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// echoAll checks that every connection echoes one message and returns how
// many did.
func echoAll(conns []*websocket.Conn, size int, e *errs) int {
	var ok atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			msg, buf := make([]byte, size), make([]byte, size)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := roundTrip(c, msg, buf); err != nil {
				e.add(err)
				return
			}
			c.SetReadDeadline(time.Time{})
			ok.Add(1)
		})
	}
	wg.Wait()
	return int(ok.Load())
}

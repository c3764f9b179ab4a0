package wsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	engine "github.com/wsproxy/wsproxy/internal/tunnel"
)

// Proxy is a WebSocket reverse proxy. It is an http.Handler; create it with
// New. All methods are safe for concurrent use.
type Proxy struct {
	cfg    config
	dialFn func(ctx context.Context, network, addr string) (net.Conn, error)
	// loopDial: upgrades dial their backends into the tunnels' event loops
	// where they can (dialsInLoop), as the proxy dials with its default
	// dialer and its tunnels run in event loops.
	loopDial bool
	log      *slog.Logger
	set      atomic.Pointer[targetSet]

	ctx    context.Context // ended by Close: aborts dials and handshakes
	cancel context.CancelFunc

	mu       sync.Mutex
	tunnels  tunnelList
	inflight int // handshakes in progress
	telling  int // tunnels out of the registry whose OnClose has not returned
	state    proxyState
	drained  chan struct{} // closed when nothing is open after Shutdown began

	limits limiter       // admission caps and rates (limits.go)
	engine engine.Config // what the tunnels obey, from cfg

	warns  warnLimiter   // rate limits warnings (logging.go)
	alerts alertCounters // refusals an operator must act on

	total, rejected, failures atomic.Int64
	closedUp, closedDown      trafficCounters

	lb lbState // health checks, discovery, draining targets

	http                    *httpProxy // WithHTTP
	httpTotal, httpFailures atomic.Int64
	affinity                affinityCounters
}

type proxyState int

const (
	running proxyState = iota
	shuttingDown
	closed
)

type trafficCounters struct {
	bytes, messages atomic.Int64
}

// New returns a proxy for the given targets (see Target for their syntax).
// It validates every target and option and reports all problems at once.
func New(targets []string, opts ...Option) (*Proxy, error) {
	cfg := defaultConfig()
	for i, o := range opts {
		if o == nil {
			cfg.errorf("New", "option %d is nil", i+1)
			continue
		}
		o.apply(&cfg)
	}
	cfg.checkConflicts()
	var set *targetSet
	targets, err := initialTargets(&cfg, targets)
	if err == nil {
		set, err = parseTargets(targets, nil)
	}
	if err != nil {
		cfg.errs = append(cfg.errs, err)
	}
	if len(cfg.errs) > 0 {
		return nil, errors.Join(cfg.errs...)
	}
	if cfg.balancer == nil {
		cfg.balancer = RoundRobin()
	}
	p := &Proxy{cfg: cfg, dialFn: cfg.dial, log: cfg.logger}
	if p.dialFn == nil {
		d := &net.Dialer{KeepAlive: defaultKeepAlive}
		p.dialFn = d.DialContext
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.limits.cfg = &p.cfg
	p.engine = engineConfig(&p.cfg)
	p.loopDial = cfg.dial == nil && p.engine.DialsInLoops()
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.indexSticky(set)
	p.set.Store(set)
	if cfg.http {
		p.http = newHTTPProxy(p)
	}
	p.startBackground()
	return p, nil
}

// ServeHTTP proxies one WebSocket upgrade request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect && r.ProtoMajor == 2 {
		p.serveH2(w, r) // RFC 8441, see h2.go
		return
	}
	switch classify(r) {
	case notUpgrade:
		p.serveFallback(w, r)
		return
	case otherUpgrade:
		p.serveFallback(w, stripUpgrade(r)) // never upgraded
		return
	}
	if err := checkClientRequest(r); err != nil {
		p.reject(w, r, err)
		return
	}
	slot, ok := p.gate(w, r)
	if !ok {
		return
	}
	defer slot.release() // unless the tunnel took it over
	if !canHijack(w) {
		p.reject(w, r, ErrNotHijackable)
		return
	}
	if !p.enter() {
		p.reject(w, r, ErrShuttingDown)
		return
	}
	launched := false
	defer func() {
		if !launched {
			p.leave() // a tunnel took the count over in register
		}
	}()

	var aff affinity
	up, err := p.connect(r, &aff)
	if err != nil {
		p.reject(w, r, err)
		return
	}
	defer up.release() // unless the tunnel took it over
	if up.resp.StatusCode != http.StatusSwitchingProtocols {
		p.refused(w, r, &up)
		return
	}
	p.stick(r, &aff, up.t, up.resp.Header)
	launched = p.open(w, r, &up, &slot)
}

// An upstream is the backend side of an upgrade on its way to a tunnel:
// the target's slot that pick took, the connection, the backend's response
// and the pooled reader it was read with. release gives back whatever it
// still holds, and may be called any number of times; handOver passes the
// slot and the connection to the tunnel instead.
type upstream struct {
	t    *Target
	conn net.Conn
	resp *http.Response
	br   *bufioReader
}

// release gives the reader back to its pool, closes the connection and
// frees the target's slot, as far as it still holds them.
func (u *upstream) release() {
	if u.br != nil {
		putReader(u.br)
		u.br = nil
	}
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
	if u.t != nil {
		u.t.open.Add(-1)
		u.t = nil
	}
}

// handOver returns the target, whose slot the tunnel now holds, the
// connection, without the handshake's deadline, and the bytes the backend
// sent after its 101 (early frames). release then does nothing.
func (u *upstream) handOver() (*Target, net.Conn, []byte) {
	t, conn, early := u.t, u.conn, buffered(u.br)
	putReader(u.br)
	conn.SetDeadline(time.Time{})
	u.t, u.conn, u.br = nil, nil, nil
	return t, conn, early
}

// gate applies what every upgrade passes after the checks of its own
// protocol: the origin policy, then the admission limits. It answers the
// client itself when it refuses.
func (p *Proxy) gate(w http.ResponseWriter, r *http.Request) (admission, bool) {
	if err := p.checkOrigin(r); err != nil {
		p.reject(w, r, err)
		return admission{}, false
	}
	slot, err := p.admit(r)
	if err != nil {
		p.reject(w, r, err)
		return admission{}, false
	}
	return slot, true
}

// refused relays a backend's own answer to the upgrade (401, 403, 426,
// 500...) to the client as it is; the connection to the backend is never
// reused.
func (p *Proxy) refused(w http.ResponseWriter, r *http.Request, up *upstream) {
	t, resp := up.t, up.resp
	cut := p.relay(w, r, resp, up.conn)
	up.release() // after the body, which is read through the reader
	t.countRefusal(resp.StatusCode)
	p.rejected.Add(1)
	err := fmt.Errorf("%w: status %d", ErrUpgradeRefused, resp.StatusCode)
	if cut != nil {
		err = fmt.Errorf("%w: status %d, body cut short: %w", ErrUpgradeRefused, resp.StatusCode, cut)
	}
	p.notifyReject(r, &BackendError{Target: t.raw, Op: "upgrade", Status: resp.StatusCode, Err: err})
	if cut != nil {
		abortResponse()
	}
}

// connect picks a target, dials it and performs the backend handshake,
// trying other targets (WithRetry) when that fails: all of it happens
// before the client got a byte. On success the upstream's response is
// either a valid 101 or a non-101 to relay, and the caller releases the
// upstream or hands it over to a tunnel.
func (p *Proxy) connect(r *http.Request, aff *affinity) (upstream, error) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()

	lb := &p.cfg.lb
	start := time.Now()
	var (
		tried   []*Target
		lastErr error
	)
	for try := 1; ; try++ {
		t, err := p.pick(r, tried, aff)
		if err != nil {
			if lastErr != nil {
				// Every target left failed this request: say why the last did.
				return upstream{}, lastErr
			}
			return upstream{}, err
		}
		last := lb.lastTry(try, start)
		up := upstream{t: t}
		up.conn, up.resp, up.br, err = p.attempt(ctx, r, t)
		switch {
		case err == nil && up.resp.StatusCode >= 500 && lb.retry5xx && !last:
			// Drop the refusal unread: closing its body would first read it
			// to the end.
			status := up.resp.StatusCode
			up.release()
			err = &BackendError{Target: t.raw, Op: "upgrade", Status: status,
				Err: fmt.Errorf("%w: status %d", ErrUpgradeRefused, status)}
			p.reportFailure(t, err)
		case err == nil && unhealthyStatus(up.resp.StatusCode):
			// Relayed, and counted against the target (logging.go).
			p.reportFailure(t, &BackendError{Target: t.raw, Op: "upgrade", Status: up.resp.StatusCode,
				Err: fmt.Errorf("%w: status %d", ErrUpgradeRefused, up.resp.StatusCode)})
			return up, nil
		case err == nil:
			t.health.succeeded()
			return up, nil
		case errors.Is(err, ErrRewrite) || ctx.Err() != nil:
			// Not the backend's fault: the request is bad or the client left.
			up.release()
			t.health.released()
			return upstream{}, err
		default:
			up.release()
			p.reportFailure(t, err)
		}
		if last {
			return upstream{}, err
		}
		lastErr = err
		tried = append(tried, t)
	}
}

// attempt dials t and performs the backend handshake. On success the
// response is a valid 101 or a non-101 to relay.
func (p *Proxy) attempt(ctx context.Context, r *http.Request, t *Target) (net.Conn, *http.Response, *bufioReader, error) {
	req, err := p.newBackendRequest(r, t)
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := p.dial(ctx, t, p.dialsInLoop(r, t))
	if err != nil {
		return nil, nil, nil, err
	}
	resp, br, err := p.backendHandshake(ctx, conn, t, req)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.StatusCode < 200 {
		if err := checkUpgradeResponse(resp, req); err != nil {
			putReader(br)
			conn.Close()
			return nil, nil, nil, &BackendError{Target: t.raw, Op: "upgrade", Err: err}
		}
	}
	return conn, resp, br, nil
}

// open hijacks the client connection, answers 101 and starts the tunnel.
func (p *Proxy) open(w http.ResponseWriter, r *http.Request, up *upstream, slot *admission) (launched bool) {
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.release()
		p.reject(w, r, fmt.Errorf("%w: %w", ErrNotHijackable, err))
		return false
	}
	// The server's ReadTimeout and WriteTimeout must not cut the tunnel.
	client.SetDeadline(time.Time{})
	clientBuf := buffered(brw.Reader)
	if err := write101(client, w.Header(), up.resp, p.cfg.handshakeTimeout); err != nil {
		client.Close()
		up.release()
		p.rejected.Add(1)
		p.notifyReject(r, fmt.Errorf("wsproxy: writing 101 to client: %w", err))
		return false
	}
	p.launch(r, client, clientBuf, up, slot, nil)
	return true
}

// launch creates the tunnel of a completed handshake, which takes over the
// upstream and the admission, registers it and starts it, for HTTP/1.1 and
// HTTP/2 alike; prepare, if not nil, finishes setting the tunnel up before
// it starts.
func (p *Proxy) launch(r *http.Request, client net.Conn, clientBuf []byte, up *upstream, slot *admission, prepare func(*tunnel)) *tunnel {
	resp := up.resp
	t, back, backBuf := up.handOver()
	info := TunnelInfo{
		Target:      t.raw,
		RemoteAddr:  r.RemoteAddr,
		Path:        r.URL.Path,
		Proto:       r.Proto,
		Subprotocol: resp.Header.Get("Sec-Websocket-Protocol"),
		Start:       time.Now(),
	}
	tn := newTunnel(p, t, client, back, info)
	if prepare != nil {
		prepare(tn)
	}
	tn.holdSlot(slot.handOver())
	t.stats.total.Add(1) // before the proxy's: its Total covers the targets'
	p.total.Add(1)
	shuttingDown := p.register(tn)
	if h := p.cfg.hooks.OnUpgrade; h != nil {
		h(tn.info())
	}
	if p.debug() {
		p.log.Debug("wsproxy: tunnel open", "target", t.raw, "remote_addr", r.RemoteAddr, "path", r.URL.Path, "proto", r.Proto)
	}
	tn.Start(clientBuf, backBuf)
	if shuttingDown {
		go tn.Close(1001, 1001, ReasonShutdown)
	}
	return tn
}

// buffered returns a copy of the bytes a reader holds beyond what was
// parsed: early frames from the client or the backend.
func buffered(br *bufioReader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return append([]byte(nil), b...)
}

// serveFallback serves a request that is not a WebSocket upgrade: through
// the targets (WithHTTP), by the fallback handler, or with 426.
func (p *Proxy) serveFallback(w http.ResponseWriter, r *http.Request) {
	if p.http != nil {
		p.http.serve(w, r)
		return
	}
	if p.cfg.fallback != nil {
		p.cfg.fallback.ServeHTTP(w, r)
		return
	}
	p.reject(w, r, ErrNotWebSocket)
}

// reject answers a request that will not become a tunnel.
func (p *Proxy) reject(w http.ResponseWriter, r *http.Request, err error) {
	p.rejected.Add(1)
	p.notifyReject(r, err)
	h := w.Header()
	// The client may already have sent frames behind its upgrade request;
	// they must never be read as a next HTTP request. An HTTP/2 stream has
	// no next request, and there the header would make Go's server send
	// GOAWAY, ending the connection's other streams' future.
	if r.ProtoMajor == 1 {
		h.Set("Connection", "close")
	}
	p.writeError(w, r, err)
}

// writeError answers a request the proxy cannot serve, with the headers
// its error calls for, through WithErrorHandler if set.
func (p *Proxy) writeError(w http.ResponseWriter, r *http.Request, err error) {
	h := w.Header()
	switch {
	case errors.Is(err, ErrBadVersion):
		h["Sec-WebSocket-Version"] = []string{"13"}
	case errors.Is(err, ErrNotWebSocket) && r.ProtoMajor == 1:
		// Upgrade and Connection are forbidden in HTTP/2 responses.
		h.Set("Upgrade", "websocket")
		h.Set("Connection", "Upgrade")
	case errors.Is(err, ErrShuttingDown), errors.Is(err, ErrNoTargetAvailable), errors.Is(err, ErrTooManyTunnels), errors.Is(err, ErrRateLimited):
		h.Set("Retry-After", retryAfter(err))
	}
	if p.cfg.errorHandler != nil {
		p.cfg.errorHandler(w, r, err)
		return
	}
	status := StatusCode(err)
	http.Error(w, publicReason(err, status), status)
}

// debug reports whether the logger takes debug records: the per-tunnel
// ones are only built then, as their arguments cost allocations on every
// upgrade.
func (p *Proxy) debug() bool {
	return p.log.Enabled(context.Background(), slog.LevelDebug)
}

func (p *Proxy) notifyReject(r *http.Request, err error) {
	if !p.alert(r, err) && p.debug() { // logging.go
		p.log.Debug("wsproxy: upgrade rejected", "remote_addr", r.RemoteAddr, "path", r.URL.Path, "err", err)
	}
	if h := p.cfg.hooks.OnReject; h != nil {
		h(r, err)
	}
}

// publicReason is the body of an error response: precise for the client's
// own mistakes, and never naming a backend address for the proxy's.
func publicReason(err error, status int) string {
	if status < 500 {
		return strings.TrimPrefix(err.Error(), "wsproxy: ")
	}
	for _, e := range []error{ErrShuttingDown, ErrNoTargetAvailable, ErrTooManyTunnels, ErrNotHijackable, ErrRewrite, ErrInvalidUpgrade} {
		if errors.Is(err, e) {
			return strings.TrimPrefix(e.Error(), "wsproxy: ")
		}
	}
	switch status {
	case http.StatusGatewayTimeout:
		return "backend did not answer in time"
	}
	return "backend unavailable"
}

// enter counts a handshake in progress, unless the proxy is shutting down.
func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != running {
		return false
	}
	p.inflight++
	return true
}

func (p *Proxy) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inflight--
	p.checkDrainedLocked()
}

// register adds a tunnel to the registry, where it takes over its
// handshake's count (enter), so that Stats never counts it twice, and
// reports whether the proxy is shutting down, in which case the caller
// closes it politely at once. The handler then does not leave.
func (p *Proxy) register(tn *tunnel) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tunnels.add(tn)
	p.inflight--
	return p.state != running
}

// tunnelClosed settles a finished tunnel's counts and tells the hooks.
func (p *Proxy) tunnelClosed(tn *tunnel, info CloseInfo) {
	tn.releaseSlot()
	t := tn.target
	t.open.Add(-1)
	t.stats.bytesIn.Add(info.ClientToBackend.Bytes)
	t.stats.bytesOut.Add(info.BackendToClient.Bytes)
	t.stats.msgsIn.Add(info.ClientToBackend.Messages)
	t.stats.msgsOut.Add(info.BackendToClient.Messages)
	p.mu.Lock()
	p.tunnels.remove(tn)
	p.telling++
	p.closedUp.bytes.Add(info.ClientToBackend.Bytes)
	p.closedUp.messages.Add(info.ClientToBackend.Messages)
	p.closedDown.bytes.Add(info.BackendToClient.Bytes)
	p.closedDown.messages.Add(info.BackendToClient.Messages)
	p.mu.Unlock()
	defer p.toldClosed()

	if p.debug() {
		attrs := []any{"target", info.Target, "remote_addr", info.RemoteAddr, "path", info.Path, "duration", info.Duration,
			"bytes_in", info.ClientToBackend.Bytes, "bytes_out", info.BackendToClient.Bytes}
		if info.Reason != "" {
			attrs = append(attrs, "reason", info.Reason)
		}
		if info.Detail != "" {
			attrs = append(attrs, "detail", info.Detail)
		}
		if info.Err != nil {
			attrs = append(attrs, "err", info.Err)
		}
		p.log.Debug("wsproxy: tunnel closed", attrs...)
	}
	if h := p.cfg.hooks.OnClose; h != nil {
		h(info)
	}
}

// toldClosed notes that a closed tunnel's hooks returned: Shutdown and
// Close return only after the OnClose of every tunnel they waited for.
func (p *Proxy) toldClosed() {
	p.mu.Lock()
	p.telling--
	p.checkDrainedLocked()
	p.mu.Unlock()
}

func (p *Proxy) checkDrainedLocked() {
	if p.state != running && p.inflight == 0 && p.tunnels.len() == 0 && p.telling == 0 && p.drained != nil {
		select {
		case <-p.drained:
		default:
			close(p.drained)
		}
	}
}

// Shutdown stops accepting upgrades (they get 503), sends every open tunnel
// a close frame 1001 (going away) to both sides at a frame boundary, and
// waits until every tunnel is closed and its OnClose hook returned. If ctx ends first, it closes the
// remaining tunnels at once and returns ctx.Err(). It may be called more
// than once, and together with http.Server.Shutdown, which does not see
// hijacked connections. HTTP requests (WithHTTP) are not tunnels: they go on
// being served, and http.Server.Shutdown waits for them; Close, or the end
// of ctx, aborts those still in flight.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.stopBackground()
	p.mu.Lock()
	if p.state == running {
		p.state = shuttingDown
	}
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	drained := p.drained
	open := p.snapshotLocked()
	p.checkDrainedLocked()
	p.mu.Unlock()

	for _, tn := range open {
		go tn.Close(1001, 1001, ReasonShutdown)
	}
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
		p.Close()
		return ctx.Err()
	}
}

// Close closes every tunnel and aborts every handshake at once, without
// close frames, and waits until their goroutines are gone.
func (p *Proxy) Close() error {
	p.stopBackground()
	p.mu.Lock()
	p.state = closed
	if p.drained == nil {
		p.drained = make(chan struct{})
	}
	drained := p.drained
	open := p.snapshotLocked()
	p.checkDrainedLocked()
	p.mu.Unlock()
	p.cancel()
	if p.http != nil {
		p.http.tr.CloseIdleConnections()
	}
	for _, tn := range open {
		tn.Abort(ReasonShutdown)
	}
	<-drained
	return nil
}

func (p *Proxy) snapshotLocked() []*tunnel {
	open := make([]*tunnel, 0, p.tunnels.len())
	for tn := range p.tunnels.all() {
		open = append(open, tn)
	}
	return open
}

// Stats returns a snapshot of the proxy's tunnels and traffic.
func (p *Proxy) Stats() Stats {
	s := Stats{
		Total:        p.total.Load(),
		Rejected:     p.rejected.Load(),
		Failures:     p.failures.Load(),
		HTTPRequests: p.httpTotal.Load(),
		HTTPFailures: p.httpFailures.Load(),
		Affinity:     p.affinity.snapshot(),

		MaxTunnelsReached: p.alerts.tunnelCap.Load(),
		NotHijackable:     p.alerts.notHijackable.Load(),
	}
	live := make(map[*Target]*TargetStats)
	all := p.set.Load().all
	draining := p.drainingTargets()
	all = append(all[:len(all):len(all)], draining...)
	s.Targets = make([]TargetStats, len(all))
	for i, t := range all {
		active := t.stats.httpActive.Load()
		s.Targets[i] = TargetStats{
			Target:          t.raw,
			Open:            max(0, t.Open()-int(active)),
			HTTPActive:      int(active),
			HTTPRequests:    t.stats.httpRequests.Load(),
			HTTPFailures:    t.stats.httpFailures.Load(),
			Total:           t.stats.total.Load(),
			Failures:        t.stats.failures.Load(),
			Refused:         t.stats.refused.Load(),
			NotEndpoint:     t.stats.notEndpoint.Load(),
			ClientToBackend: Traffic{Bytes: t.stats.bytesIn.Load(), Messages: t.stats.msgsIn.Load()},
			BackendToClient: Traffic{Bytes: t.stats.bytesOut.Load(), Messages: t.stats.msgsOut.Load()},
			Backup:          t.Backup,
			Healthy:         t.health.healthy(),
			Draining:        i >= len(all)-len(draining),
		}
		live[t] = &s.Targets[i]
	}
	p.mu.Lock()
	s.Open = p.tunnels.len() + p.inflight
	s.ClientToBackend = Traffic{Bytes: p.closedUp.bytes.Load(), Messages: p.closedUp.messages.Load()}
	s.BackendToClient = Traffic{Bytes: p.closedDown.bytes.Load(), Messages: p.closedDown.messages.Load()}
	for tn := range p.tunnels.all() {
		up, down := tn.traffic()
		s.ClientToBackend.Bytes += up.Bytes
		s.ClientToBackend.Messages += up.Messages
		s.BackendToClient.Bytes += down.Bytes
		s.BackendToClient.Messages += down.Messages
		if ts := live[tn.target]; ts != nil {
			ts.ClientToBackend.Bytes += up.Bytes
			ts.ClientToBackend.Messages += up.Messages
			ts.BackendToClient.Bytes += down.Bytes
			ts.BackendToClient.Messages += down.Messages
		}
	}
	p.mu.Unlock()
	return s
}

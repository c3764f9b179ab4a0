package wsproxy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// lbConfig holds the options of load balancing, health, retry, draining
// and discovery; it lives in config.lb.
type lbConfig struct {
	maxFails   int
	failWindow time.Duration
	cooldown   time.Duration

	tries      int
	retryTotal time.Duration
	retry5xx   bool

	drainTimeout time.Duration

	check *HealthCheck

	discovery      Resolver
	discoveryEvery time.Duration
}

// Defaults of passive health are nginx's: max_fails=1 fail_timeout=10s.
const (
	defaultMaxFails   = 1
	defaultFailTime   = 10 * time.Second
	defaultTries      = 3
	defaultCheckEvery = 5 * time.Second
	defaultCheckTime  = 2 * time.Second
	defaultCheckRise  = 2
	defaultCheckFall  = 3
)

func defaultLBConfig() lbConfig {
	return lbConfig{
		maxFails:   defaultMaxFails,
		failWindow: defaultFailTime,
		cooldown:   defaultFailTime,
		tries:      defaultTries,
	}
}

// WithPassiveHealth sets how real traffic marks a target down, like nginx's
// max_fails and fail_timeout. A failed dial, a handshake that fails or
// times out, an invalid 101, a 5xx answer to an upgrade other than 501 and
// 505 (HAProxy's observe layer7 classes), and an HTTP request (WithHTTP)
// whose connection failed or that got no response in time each count as a
// failure; a backend that answers anything else is alive. A 2xx, 3xx or 404
// answer to an upgrade (nothing serves WebSockets at that path) is warned
// about and counted in TargetStats.NotEndpoint but does not count: the
// client chooses the path, and could otherwise take every target out with
// upgrades to one that does not exist (nginx never counts 403 and 404
// either); WithHealthCheck finds a target whose URL has the wrong path. Upgrades and HTTP
// requests share a target's health. After maxFails failures within window the
// target gets no new tunnels for cooldown. Then exactly one request tries
// it: success brings it back, failure starts another cool-down, so a dead
// target costs at most one failed dial per cool-down. As in nginx, a proxy
// with a single target never takes it out, and when every target is out by
// passive health alone they are all tried anyway, so that recovery costs
// one request rather than a cool-down (active health checks, when on, still
// keep the targets they found down out).
// Default: 1 failure, 10s window, 10s cool-down. maxFails 0 turns passive
// health off.
func WithPassiveHealth(maxFails int, window, cooldown time.Duration) Option {
	return optionFunc(func(c *config) {
		switch {
		case maxFails < 0:
			c.errorf("WithPassiveHealth", "negative maxFails %d", maxFails)
		case maxFails > 0 && (window <= 0 || cooldown <= 0):
			c.errorf("WithPassiveHealth", "window %v and cooldown %v must be positive", window, cooldown)
		default:
			c.lb.maxFails, c.lb.failWindow, c.lb.cooldown = maxFails, window, cooldown
		}
	})
}

// lastTry reports whether try, of a request whose first try began at start,
// may be followed by no other (WithRetry).
func (lb *lbConfig) lastTry(try int, start time.Time) bool {
	return try >= lb.tries || (lb.retryTotal > 0 && time.Since(start) >= lb.retryTotal)
}

// WithRetry sets how often a new tunnel may try another target when a dial
// or the backend handshake fails (or the 101 is invalid). Each try goes to a
// target not tried yet for this request. No try starts after total has
// passed since the first began; a try that has started runs to its own dial
// and handshake timeouts. Nothing is retried once the client received a
// byte, and a backend's non-101 answer is relayed, not retried (see
// WithRetryOn5xx).
// Default: 3 tries, no total limit. tries 1 disables retries.
func WithRetry(tries int, total time.Duration) Option {
	return optionFunc(func(c *config) {
		if tries < 1 || total < 0 {
			c.errorf("WithRetry", "tries %d must be at least 1 and total %v not negative", tries, total)
			return
		}
		c.lb.tries, c.lb.retryTotal = tries, total
	})
}

// WithRetryOn5xx makes a backend's 5xx answer to the upgrade count as a
// failure that is retried on another target (nginx proxy_next_upstream
// http_500 http_502 http_503 http_504). The answer of the last try is
// relayed.
// Default: off; a 5xx answer is relayed to the client at once.
func WithRetryOn5xx() Option {
	return optionFunc(func(c *config) { c.lb.retry5xx = true })
}

// HealthCheck configures active health checks (WithHealthCheck).
type HealthCheck struct {
	// Path is the request path of the probe's WebSocket handshake, joined
	// to the target URL's path. Default: "/".
	Path string
	// Interval between two probes of a target. Default: 5s.
	Interval time.Duration
	// Timeout bounds one probe, dial and handshake together. Default: 2s.
	Timeout time.Duration
	// Rise is how many probes in a row must pass to bring a target that is
	// down back. Default: 2.
	Rise int
	// Fall is how many probes in a row must fail to take a target down.
	// Default: 3.
	Fall int
	// TCPOnly probes with a TCP connect (and TLS handshake for wss) alone,
	// for backends whose WebSocket endpoints all need credentials.
	// Default: false, a full WebSocket handshake expecting a valid 101,
	// after which the probe sends a close frame 1000.
	TCPOnly bool
}

// WithHealthCheck probes every target in the background, in addition to
// passive health: a WebSocket handshake to hc.Path that must be answered
// with a valid 101 (or a TCP connect with TCPOnly), every hc.Interval. A
// target whose probes fail hc.Fall times in a row gets no new tunnels until
// hc.Rise probes in a row pass; a passing probe also ends a passive
// cool-down. Probes stop on Shutdown and Close.
// Default: no active health checks.
func WithHealthCheck(hc HealthCheck) Option {
	return optionFunc(func(c *config) {
		if hc.Path == "" {
			hc.Path = "/"
		}
		if hc.Interval == 0 {
			hc.Interval = defaultCheckEvery
		}
		if hc.Timeout == 0 {
			hc.Timeout = defaultCheckTime
		}
		if hc.Rise == 0 {
			hc.Rise = defaultCheckRise
		}
		if hc.Fall == 0 {
			hc.Fall = defaultCheckFall
		}
		if err := hc.validate(); err != nil {
			c.errorf("WithHealthCheck", "%v", err)
			return
		}
		c.lb.check = &hc
	})
}

// validate names every field of hc that is wrong, after defaults.
func (hc *HealthCheck) validate() error {
	var errs []string
	if hc.Path[0] != '/' {
		errs = append(errs, fmt.Sprintf("Path %q does not start with /", hc.Path))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"Interval", hc.Interval}, {"Timeout", hc.Timeout}} {
		if f.v < 0 {
			errs = append(errs, fmt.Sprintf("%s %v is negative", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"Rise", hc.Rise}, {"Fall", hc.Fall}} {
		if f.v < 0 {
			errs = append(errs, fmt.Sprintf("%s %d is negative", f.name, f.v))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

// targetHealth is a target's health state. Reads on the pick path are
// atomic loads; the failure window is guarded by mu.
type targetHealth struct {
	downUntil  atomic.Int64 // unix nanoseconds; 0 while passively up
	trial      atomic.Bool  // one request is trying the target after its cool-down
	activeDown atomic.Bool  // active checks took it out

	mu          sync.Mutex
	fails       int
	windowStart time.Time

	// Consecutive probe results, touched only by the checker goroutine.
	rise, fall int
}

// healthy reports whether the target is in rotation now, as far as
// health goes.
func (h *targetHealth) healthy() bool {
	return !h.activeDown.Load() && h.downUntil.Load() == 0
}

// available reports whether a new tunnel may go to the target at now: it is
// up, or its cool-down is over and no other request is trying it yet.
func (h *targetHealth) available(now int64) bool {
	if h.activeDown.Load() {
		return false
	}
	d := h.downUntil.Load()
	return d == 0 || (now >= d && !h.trial.Load())
}

// claim is called once the balancer chose the target; for a target whose
// cool-down is over it lets exactly one request through.
func (h *targetHealth) claim() bool {
	if h.downUntil.Load() == 0 {
		return true
	}
	return h.trial.CompareAndSwap(false, true)
}

// succeeded records a backend that answered.
func (h *targetHealth) succeeded() {
	if h.downUntil.Load() != 0 {
		h.mu.Lock()
		h.fails = 0
		h.mu.Unlock()
		h.downUntil.Store(0)
	}
	h.trial.Store(false)
}

// failed records a failure and reports whether it took the target down.
func (h *targetHealth) failed(lb *lbConfig, now time.Time) bool {
	if lb.maxFails == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	down := h.trial.Load() || h.downUntil.Load() != 0
	if !down {
		if h.fails == 0 || now.Sub(h.windowStart) > lb.failWindow {
			h.fails, h.windowStart = 0, now
		}
		h.fails++
		down = h.fails >= lb.maxFails
	}
	if down {
		h.fails = 0
		h.downUntil.Store(now.Add(lb.cooldown).UnixNano())
	}
	h.trial.Store(false)
	return down
}

// released gives back a claim that led to no verdict (the client left, the
// rewrite hook failed).
func (h *targetHealth) released() { h.trial.Store(false) }

// reportFailure counts a failed dial or handshake against t. As in nginx,
// a lone target is never taken out: there is nowhere else to go, and a
// client is better served by a fresh try than by 503 for a cool-down.
func (p *Proxy) reportFailure(t *Target, err error) {
	t.stats.failures.Add(1)
	p.failures.Add(1)
	p.markFailed(t, err)
}

// markFailed counts a failure against t's passive health, HTTP requests'
// and upgrades' alike: they share the target's health.
func (p *Proxy) markFailed(t *Target, err error) {
	if len(p.set.Load().all) == 1 {
		return
	}
	if t.health.failed(&p.cfg.lb, time.Now()) {
		p.log.Warn("wsproxy: target down", "target", t.raw, "cooldown", p.cfg.lb.cooldown, "err", err)
	}
}

// lbState is the proxy's background work for load balancing: health
// checks, discovery and the drain timers of removed targets.
type lbState struct {
	mu       sync.Mutex              // serialises target swaps; guards draining
	draining map[*Target]*time.Timer // removed targets with open tunnels; nil timer: no drain timeout
	stop     context.CancelFunc      // ends the background goroutines
	wg       sync.WaitGroup          // the background goroutines
	stopped  bool
}

// startBackground starts health checks and discovery, if configured.
func (p *Proxy) startBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	p.lb.stop = cancel
	if hc := p.cfg.lb.check; hc != nil {
		p.lb.wg.Go(func() { p.runHealthChecks(ctx, hc) })
	}
	if r := p.cfg.lb.discovery; r != nil {
		p.lb.wg.Go(func() { p.runDiscovery(ctx, r, p.cfg.lb.discoveryEvery) })
	}
}

// stopBackground ends health checks, discovery and drain timers and waits
// for them; Shutdown and Close call it.
func (p *Proxy) stopBackground() {
	p.lb.mu.Lock()
	p.lb.stopped = true
	for _, tm := range p.lb.draining {
		if tm != nil {
			tm.Stop()
		}
	}
	p.lb.mu.Unlock()
	if p.lb.stop != nil {
		p.lb.stop()
	}
	p.lb.wg.Wait()
}

func (p *Proxy) runHealthChecks(ctx context.Context, hc *HealthCheck) {
	tick := time.NewTicker(hc.Interval)
	defer tick.Stop()
	for {
		var wg sync.WaitGroup
		for _, t := range p.set.Load().all {
			wg.Go(func() { p.observeProbe(t, hc, p.probe(ctx, t, hc)) })
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *Proxy) observeProbe(t *Target, hc *HealthCheck, err error) {
	h := &t.health
	if errors.Is(err, context.Canceled) {
		return // stopping
	}
	if err == nil {
		h.fall = 0
		h.rise++
		if h.activeDown.Load() && h.rise >= hc.Rise {
			h.activeDown.Store(false)
			p.log.Info("wsproxy: target up", "target", t.raw)
		}
		h.succeeded()
		return
	}
	h.rise = 0
	h.fall++
	if !h.activeDown.Load() && h.fall >= hc.Fall {
		h.activeDown.Store(true)
		p.log.Warn("wsproxy: target down", "target", t.raw, "err", err)
	}
}

// probe dials t and, unless hc.TCPOnly, performs a WebSocket handshake with
// the proxy's own code and checks, then says goodbye with a close frame.
func (p *Proxy) probe(ctx context.Context, t *Target, hc *HealthCheck) error {
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	conn, err := p.dial(ctx, t, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	if hc.TCPOnly {
		return nil
	}
	var k [16]byte
	rand.Read(k[:])
	path, rawPath := joinURLPath(t.URL, &url.URL{Path: hc.Path})
	u := url.URL{Path: path, RawPath: rawPath, RawQuery: t.URL.RawQuery}
	req := &backendRequest{
		uri:    u.RequestURI(),
		host:   t.URL.Host,
		header: http.Header{"User-Agent": {"wsproxy-health-check"}},
		key:    base64.StdEncoding.EncodeToString(k[:]),
	}
	p.setOwnHeaders(req.header, req.key)
	resp, br, err := p.backendHandshake(ctx, conn, t, req)
	if err != nil {
		return err
	}
	defer putReader(br)
	resp.Body.Close()
	if err := checkUpgradeResponse(resp, req); err != nil {
		return &BackendError{Target: t.raw, Op: "upgrade", Err: err}
	}
	// A polite goodbye: close frame, FIN, and a short wait for the peer's
	// answer so the backend sees a clean close rather than a reset.
	conn.SetDeadline(time.Now().Add(min(hc.Timeout, time.Second)))
	if _, err := conn.Write(wsframe.AppendControl(nil, wsframe.OpClose, wsframe.ClosePayload(wsframe.CloseNormal, "health check"), wsframe.NewMask())); err != nil {
		return fmt.Errorf("wsproxy: health check close frame: %w", err)
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(br, 1<<10))
	return nil
}

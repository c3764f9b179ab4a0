package wsproxy

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Refusals an operator must act on are logged at warn level, the others
// (a client's bad request, a backend's 401) at debug. Each class of warning
// is rate-limited on its own, so that a flood of requests, an attack or a
// broken deploy, cannot flood the log: the first record of a class is
// written at once, later ones at most once every warnEvery, each saying how
// many were left out since the last ("suppressed"). Stats counts every one.

// warnEvery is how often a class of warning may be logged after its first.
const warnEvery = 10 * time.Second

// warnKind is a class of warning, rate-limited as one.
type warnKind int

const (
	warnBackendFailed warnKind = iota // dial, handshake or invalid 101
	warnBackend5xx                    // a 5xx answer to an upgrade
	warnNotEndpoint                   // a 2xx, 3xx or 404 answer: the wrong path?
	warnTunnelCap                     // WithMaxTunnels reached
	warnNotHijackable                 // a middleware hides the Hijacker
	warnNoTarget                      // every target down, draining or full
	warnRewrite                       // the rewrite hook made an invalid request
	numWarnKinds
)

// Errors that say which limit refused an upgrade; both are
// ErrTooManyTunnels.
var (
	errTunnelCap       = fmt.Errorf("%w: the proxy's cap (WithMaxTunnels) is reached", ErrTooManyTunnels)
	errClientTunnelCap = fmt.Errorf("%w: this client's cap (WithMaxTunnelsPerIP) is reached", ErrTooManyTunnels)
)

// errNotEndpoint is an HTTP/2 upgrade answered with a 2xx, which cannot be
// relayed (it would tell the client its socket is open).
var errNotEndpoint = fmt.Errorf("%w (a 2xx, which HTTP/2 cannot relay)", ErrInvalidUpgrade)

// warnLimiter decides which warnings are written.
type warnLimiter struct {
	mu         sync.Mutex
	last       [numWarnKinds]time.Time // when the last record of a kind was written
	suppressed [numWarnKinds]int64     // left out since
}

// allow reports whether a warning of kind k may be written at now, and how
// many of its kind were left out since the last one written.
func (l *warnLimiter) allow(k warnKind, now time.Time) (bool, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last[k].IsZero() && now.Sub(l.last[k]) < warnEvery {
		l.suppressed[k]++
		return false, 0
	}
	n := l.suppressed[k]
	l.last[k], l.suppressed[k] = now, 0
	return true, n
}

// warn writes a warning of kind k unless the limiter holds it back.
func (p *Proxy) warn(k warnKind, msg string, args ...any) {
	ok, n := p.warns.allow(k, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	p.log.Warn(msg, args...)
}

// alert counts and logs a refusal that an operator must act on, and
// reports whether err was one.
func (p *Proxy) alert(r *http.Request, err error) bool {
	var be *BackendError
	target := ""
	if errors.As(err, &be) {
		target = be.Target
	}
	if be != nil && be.Status == 0 && r.Context().Err() != nil {
		// The client left during the backend handshake and ended it
		// itself: the backend did nothing wrong.
		return false
	}
	switch {
	case be != nil && be.Status != 0:
		switch {
		case notEndpoint(be.Status):
			p.warn(warnNotEndpoint, "wsproxy: backend answered the upgrade as plain HTTP: not a WebSocket endpoint at this path?",
				"target", be.Target, "path", r.URL.Path, "status", be.Status, "remote_addr", r.RemoteAddr)
		case unhealthyStatus(be.Status):
			p.warn(warnBackend5xx, "wsproxy: backend refused the upgrade", "target", be.Target, "path", r.URL.Path,
				"status", be.Status, "remote_addr", r.RemoteAddr)
		default:
			return false // the application's own answer: 401, 403, 426, ...
		}
	case errors.Is(err, errNotEndpoint):
		p.warn(warnNotEndpoint, "wsproxy: backend answered the upgrade as plain HTTP: not a WebSocket endpoint at this path?",
			"target", target, "path", r.URL.Path, "remote_addr", r.RemoteAddr, "err", err)
	case be != nil:
		p.warn(warnBackendFailed, "wsproxy: backend failed", "target", be.Target, "remote_addr", r.RemoteAddr, "err", err)
	case errors.Is(err, errTunnelCap):
		p.alerts.tunnelCap.Add(1)
		p.warn(warnTunnelCap, "wsproxy: tunnel cap reached, upgrades refused with 503", "max_tunnels", p.cfg.maxTunnels,
			"remote_addr", r.RemoteAddr)
	case errors.Is(err, ErrNotHijackable):
		p.alerts.notHijackable.Add(1)
		p.warn(warnNotHijackable, "wsproxy: cannot take over the connection, upgrades refused with 500", "path", r.URL.Path,
			"proto", r.Proto, "err", err)
	case errors.Is(err, ErrNoTargetAvailable):
		p.warn(warnNoTarget, "wsproxy: no target available, upgrades refused with 503", "path", r.URL.Path,
			"remote_addr", r.RemoteAddr)
	case errors.Is(err, ErrRewrite):
		p.warn(warnRewrite, "wsproxy: the rewrite hook made an invalid request, upgrades refused with 500", "path", r.URL.Path,
			"err", err)
	default:
		return false
	}
	return true
}

// alertCounters are the Stats counters of refusals that name no target.
type alertCounters struct {
	tunnelCap, notHijackable atomic.Int64
}

// notEndpoint reports whether a backend's status, in answer to an
// upgrade, says that it served the path as plain HTTP (2xx, a redirect) or
// has nothing there (404): most likely a target URL with the wrong path, or
// a client asking for one. It never counts against the target's health,
// since the client chooses the path: a client could otherwise take every
// target out with upgrades to a path that does not exist. nginx
// (403 and 404 are never unsuccessful attempts) and HAProxy (observe
// layer7 takes 100 to 499 as valid) agree. WithHealthCheck, whose probe
// needs a 101, catches a target whose URL is wrong.
func notEndpoint(status int) bool {
	return status >= 200 && status < 400 || status == http.StatusNotFound
}

// unhealthyStatus reports whether a backend's status, in answer to an
// upgrade, counts against its health (passive health, WithPassiveHealth):
// the 5xx that HAProxy's observe layer7 counts as errors, that is all but
// 501 and 505, which a client's request causes. nginx counts 500, 502, 503
// and 504 when proxy_next_upstream lists them (WithRetryOn5xx retries them).
func unhealthyStatus(status int) bool {
	return status >= 500 && status != http.StatusNotImplemented && status != http.StatusHTTPVersionNotSupported
}

// countRefusal counts a target's non-101 answer in its Stats.
func (t *Target) countRefusal(status int) {
	t.stats.refused.Add(1)
	if notEndpoint(status) {
		t.stats.notEndpoint.Add(1)
	}
}

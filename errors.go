package wsproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
)

// Errors returned by New and SetTargets, passed to the error handler and to
// the reject hook. Match them with errors.Is; backend failures also match
// *BackendError with errors.As.
var (
	// ErrNoTargets: New or SetTargets got an empty target list.
	ErrNoTargets = errors.New("wsproxy: no targets")
	// ErrBadTarget: a target string cannot be used; the error names it.
	ErrBadTarget = errors.New("wsproxy: invalid target")
	// ErrBadOption: an option was given an invalid value; the error names it.
	ErrBadOption = errors.New("wsproxy: invalid option")

	// ErrNotWebSocket: the request is not a WebSocket upgrade at all (426).
	ErrNotWebSocket = errors.New("wsproxy: not a websocket upgrade request")
	// ErrBadHandshake: the client's upgrade request breaks RFC 6455 §4.1 (400).
	ErrBadHandshake = errors.New("wsproxy: bad websocket handshake")
	// ErrBadVersion: Sec-WebSocket-Version is missing or not 13 (426).
	ErrBadVersion = errors.New("wsproxy: unsupported websocket version")
	// ErrOriginDenied: the Origin header failed the origin policy (403).
	ErrOriginDenied = errors.New("wsproxy: origin not allowed")
	// ErrShuttingDown: Shutdown or Close was called (503).
	ErrShuttingDown = errors.New("wsproxy: proxy is shutting down")
	// ErrNoTargetAvailable: every target is down, draining or at its
	// connection cap (503).
	ErrNoTargetAvailable = errors.New("wsproxy: no target available")
	// ErrTooManyTunnels: a global or per-client limit on open tunnels was
	// reached (503).
	ErrTooManyTunnels = errors.New("wsproxy: too many open tunnels")
	// ErrRateLimited: a handshake rate limit was reached (429).
	ErrRateLimited = errors.New("wsproxy: too many handshakes")
	// ErrNotHijackable: the ResponseWriter cannot be hijacked, typically
	// because a middleware wraps it without an Unwrap method (500).
	ErrNotHijackable = errors.New("wsproxy: response writer does not support hijacking (a middleware wraps it without Unwrap)")
	// ErrRewrite: the rewrite hook produced a request the proxy refuses to
	// send, such as a header value with a line break (500).
	ErrRewrite = errors.New("wsproxy: invalid request after rewrite")

	// ErrDial: the backend could not be reached (502), or not in time (504).
	ErrDial = errors.New("wsproxy: backend dial failed")
	// ErrBackendHandshake: the backend did not answer the upgrade with a
	// valid response in time or at all (502, or 504 on timeout).
	ErrBackendHandshake = errors.New("wsproxy: backend handshake failed")
	// ErrBackendRequest: an HTTP request (WithHTTP) reached the backend but
	// got no response, or not in time (502, or 504 on timeout).
	ErrBackendRequest = errors.New("wsproxy: backend request failed")
	// ErrInvalidUpgrade: the backend answered 101 but the response fails a
	// check of RFC 6455 §4.1 (Upgrade, Connection, Sec-WebSocket-Accept,
	// subprotocol or extension not offered). The proxy does not tunnel (502).
	ErrInvalidUpgrade = errors.New("wsproxy: backend sent an invalid 101 response")
	// ErrUpgradeRefused: the backend answered the upgrade with a status other
	// than 101 (401, 403, 426...). Its response was relayed to the client.
	ErrUpgradeRefused = errors.New("wsproxy: backend refused the upgrade")
)

// BackendError is a failure talking to one target, before any byte was
// tunnelled or answered. Op is "dial", "handshake" or "upgrade", and
// "request" for an HTTP request (WithHTTP) that reached the backend.
type BackendError struct {
	Target string
	Op     string
	// Status is the backend's own status when it refused the upgrade
	// (ErrUpgradeRefused); its response was relayed to the client.
	Status int
	Err    error
}

func (e *BackendError) Error() string {
	return "wsproxy: " + e.Op + " " + e.Target + ": " + unprefixed(e.Err)
}

func (e *BackendError) Unwrap() error { return e.Err }

// wrap returns an error that matches both sentinel and cause with errors.Is
// and errors.As and reads "sentinel: context: cause", naming the package
// once: the cause's own "wsproxy: " prefixes are left out of the text.
func wrap(sentinel error, context string, cause error) error {
	return &wrapError{msg: sentinel.Error() + ": " + context + ": " + unprefixed(cause), errs: []error{sentinel, cause}}
}

type wrapError struct {
	msg  string
	errs []error
}

func (e *wrapError) Error() string   { return e.msg }
func (e *wrapError) Unwrap() []error { return e.errs }

// unprefixed is err's text without the package prefix, for an error that
// says it inside another one's. A joined error has a prefix on every line.
func unprefixed(err error) string {
	return strings.ReplaceAll(err.Error(), "wsproxy: ", "")
}

// Timeout reports whether the failure was a timeout.
func (e *BackendError) Timeout() bool { return isTimeout(e.Err) }

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// StatusCode returns the HTTP status the proxy answers with for err: 400, 403,
// 426, 429, 500, 502, 503 or 504. Unknown errors map to 502.
func StatusCode(err error) int {
	var be *BackendError
	if errors.As(err, &be) && be.Status != 0 {
		return be.Status
	}
	switch {
	case errors.Is(err, ErrBadVersion), errors.Is(err, ErrNotWebSocket):
		return http.StatusUpgradeRequired
	case errors.Is(err, ErrBadHandshake):
		return http.StatusBadRequest
	case errors.Is(err, ErrOriginDenied):
		return http.StatusForbidden
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrShuttingDown), errors.Is(err, ErrNoTargetAvailable), errors.Is(err, ErrTooManyTunnels):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrNotHijackable), errors.Is(err, ErrRewrite):
		return http.StatusInternalServerError
	case isTimeout(err):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

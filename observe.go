package wsproxy

import (
	"net/http"
	"time"
)

// Hooks are called as tunnels open and close and as requests are refused,
// in the spirit of net/http/httptrace: plain functions, any of them nil.
// They run on the proxy's goroutines and should return quickly; they are
// the place to feed metrics (see examples/metrics/wsprom) or audit logs.
type Hooks struct {
	// OnUpgrade is called once the backend accepted the upgrade and the
	// client got its 101, before the first byte is tunnelled.
	OnUpgrade func(TunnelInfo)
	// OnReject is called for every upgrade request that does not become a
	// tunnel, with the error that says why; StatusCode(err) is the status
	// the client got (for a backend's own non-101 answer, which is relayed,
	// the backend's status).
	OnReject func(r *http.Request, err error)
	// OnClose is called once per tunnel, after both connections are closed.
	// Proxy.Shutdown and Proxy.Close return only after it returned for every
	// tunnel they closed, so it must not call them.
	OnClose func(CloseInfo)
	// OnRequest is called once per HTTP request proxied with WithHTTP, when
	// its response was passed on or broke. Requests the proxy answered with
	// an error also reach OnReject.
	OnRequest func(RequestInfo)
}

func (h Hooks) join(o Hooks) Hooks {
	return Hooks{
		OnUpgrade: join1(h.OnUpgrade, o.OnUpgrade),
		OnReject:  join2(h.OnReject, o.OnReject),
		OnClose:   join1(h.OnClose, o.OnClose),
		OnRequest: join1(h.OnRequest, o.OnRequest),
	}
}

func join1[T any](a, b func(T)) func(T) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(v T) { a(v); b(v) }
}

func join2[T, U any](a, b func(T, U)) func(T, U) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(v T, w U) { a(v, w); b(v, w) }
}

// TunnelInfo describes a tunnel.
type TunnelInfo struct {
	Target      string    // the target string
	RemoteAddr  string    // the client's address, as http.Request.RemoteAddr
	Path        string    // the request path the client asked for
	Proto       string    // the client's protocol: "HTTP/1.1", or "HTTP/2.0" for RFC 8441
	Subprotocol string    // the negotiated Sec-WebSocket-Protocol, if any
	Start       time.Time // when the tunnel opened
}

// Traffic counts what passed in one direction of a tunnel.
type Traffic struct {
	// Bytes written to the receiving side after the handshake, frame
	// headers and the proxy's own control frames included: exactly what that
	// side read.
	Bytes int64
	// Messages is the number of complete data messages forwarded.
	Messages int64
	// CloseCode is the code of the close frame the sending side sent, 1005
	// if its close frame had no code, 0 if it sent none.
	CloseCode int
}

// CloseInfo describes a tunnel that ended.
type CloseInfo struct {
	TunnelInfo
	Duration        time.Duration
	ClientToBackend Traffic
	BackendToClient Traffic
	// Reason says why the proxy ended the tunnel: one of the Reason
	// constants, a small fixed set fit for a metric label. It is empty when
	// the proxy did not end it: the peers closed it themselves, or a
	// network error (Err) did.
	Reason string
	// Detail is free text about Reason where there is more to say: for
	// ReasonProtocolError, the rule the peer broke. It is also the reason
	// text of the close frames the proxy sent. Otherwise empty.
	Detail string
	// Err is the network error that ended the tunnel, nil for an orderly end.
	Err error
}

// The reasons the proxy gives in CloseInfo.Reason when it ends a tunnel,
// also the reason text of the close frames it sends then (except for
// ReasonProtocolError, whose frames carry the Detail).
const (
	ReasonShutdown              = "shutdown"                // Proxy.Shutdown or Proxy.Close
	ReasonIdleTimeout           = "idle timeout"            // WithIdleTimeout: no data either way
	ReasonMaxLifetime           = "max lifetime"            // WithMaxLifetime
	ReasonTargetRemoved         = "target removed"          // WithDrainTimeout passed after SetTargets or discovery removed the target
	ReasonBackendNotResponding  = "backend not responding"  // WithPingInterval: the backend answered no ping
	ReasonClientNotResponding   = "client not responding"   // WithPingInterval: the client answered no ping
	ReasonBackendConnectionLost = "backend connection lost" // the backend's connection broke (a reset); the client got 1011
	ReasonClientConnectionLost  = "client connection lost"  // the client's connection broke (a reset); the backend got 1001
	ReasonHalfCloseTimeout      = "half-close timeout"      // WithHalfCloseTimeout: one side sent FIN, the other stayed open
	ReasonMessageTooBig         = "message too big"         // WithMaxMessageSize; both sides got 1009
	ReasonProtocolError         = "protocol error"          // a peer broke RFC 6455 framing; both sides got 1002, Detail says how
)

// Stats is a snapshot of the proxy's tunnels and traffic. Counters are
// cumulative since New; byte and message counts include open tunnels.
type Stats struct {
	Open            int   // tunnels open now, handshakes in progress included
	Total           int64 // tunnels opened
	Rejected        int64 // upgrade requests that did not become tunnels
	Failures        int64 // backend failures, as TargetStats.Failures
	ClientToBackend Traffic
	BackendToClient Traffic
	// HTTPRequests counts requests proxied with WithHTTP; HTTPFailures those
	// of them the proxy answered with an error (502, 503, 504) because no
	// target answered.
	HTTPRequests int64
	HTTPFailures int64
	// Affinity says where requests with a sticky cookie or a hash key went.
	Affinity AffinityStats
	// MaxTunnelsReached counts upgrades refused with 503 because the
	// WithMaxTunnels cap was reached; NotHijackable those refused with 500
	// because the ResponseWriter could not be taken over (a middleware
	// wraps it without Unwrap). Both are logged at warn level, rate-limited.
	MaxTunnelsReached int64
	NotHijackable     int64
	Targets           []TargetStats
}

// TargetStats is the part of Stats for one target.
type TargetStats struct {
	Target string
	// Open counts tunnels, handshakes in progress included.
	Open  int
	Total int64
	// Failures counts failed dials and handshakes, invalid 101s and the 5xx
	// answers that count against the target's health (all but 501, 505).
	Failures int64
	// Refused counts upgrades the target answered with a status other than
	// 101, relayed to the client (or, for a 2xx over HTTP/2, turned into
	// 502). NotEndpoint counts those of them that were a 2xx, 3xx or 404:
	// nothing serves WebSockets at that path, most often a target URL or a
	// route with the wrong path. They are logged at warn level,
	// rate-limited, and do not count against the target's health.
	Refused         int64
	NotEndpoint     int64
	ClientToBackend Traffic
	BackendToClient Traffic
	Backup          bool
	// Healthy is false while passive or active health checks keep the
	// target out of rotation.
	Healthy bool
	// Draining is true for a target removed by SetTargets whose tunnels
	// or HTTP requests are still open.
	Draining bool
	// HTTPActive counts the HTTP requests in flight to the target,
	// HTTPRequests those it answered, HTTPFailures the tries whose
	// connection to it failed (WithHTTP).
	HTTPActive   int
	HTTPRequests int64
	HTTPFailures int64
}

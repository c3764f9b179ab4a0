// Package wsprom exports a wsproxy.Proxy's Stats and hooks as Prometheus
// metrics. It lives in its own module, so that the wsproxy library never
// depends on Prometheus:
//
//	c := wsprom.New(wsprom.Options{})
//	p, err := wsproxy.New(targets, wsproxy.WithHooks(c.Hooks()))
//	if err != nil { ... }
//	c.SetProxy(p)
//	reg := prometheus.NewRegistry() // or prometheus.DefaultRegisterer
//	reg.MustRegister(c)
//	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// A Collector reads Proxy.Stats at scrape time, so counts are exact and cost
// nothing per message, and takes what Stats cannot give (tunnel lifetimes,
// why tunnels ended, close codes, refusals) from the hooks.
//
// # Metrics
//
// From Stats, labelled by target (the target URL as configured or
// discovered):
//
//	wsproxy_tunnels_open            gauge    target             tunnels open now, handshakes in progress included
//	wsproxy_tunnels_total           counter  target             tunnels opened
//	wsproxy_backend_failures_total  counter  target             backend dial and handshake failures
//	wsproxy_bytes_total             counter  target, direction  bytes written to the receiving side, frame headers included
//	wsproxy_messages_total          counter  target, direction  data messages forwarded
//	wsproxy_target_healthy          gauge    target             1 while the target is in rotation
//	wsproxy_target_draining         gauge    target             1 while a removed target still has tunnels or requests
//	wsproxy_http_requests_active    gauge    target             HTTP requests in flight (WithHTTP)
//	wsproxy_http_requests_total     counter  target             HTTP requests the target answered
//	wsproxy_http_failures_total     counter  target             HTTP tries whose connection to the target failed
//	wsproxy_upgrades_refused_total       counter  target        upgrades the target answered with a status other than 101
//	wsproxy_upgrades_not_endpoint_total  counter  target        of those, the 2xx, 3xx and 404: the wrong path?
//	wsproxy_affinity_total          counter  result             sticky cookie and hash key outcomes (Stats.Affinity)
//	wsproxy_max_tunnels_reached_total    counter                upgrades refused with 503 at the WithMaxTunnels cap
//
// direction is "client_to_backend" or "backend_to_client"; result is
// "kept", "assigned", "unknown", "down", "full", "failed" or "spilled".
//
// From the hooks:
//
//	wsproxy_tunnel_duration_seconds        histogram  target                how long tunnels lived
//	wsproxy_tunnels_closed_total           counter    target, reason        tunnels ended, by why
//	wsproxy_close_codes_total              counter    side, code            close codes each side sent
//	wsproxy_rejects_total                  counter    status, reason        requests refused or answered with an error
//	wsproxy_http_responses_total           counter    target, method, code  HTTP requests proxied, by the status the client got
//	wsproxy_http_request_duration_seconds  histogram  target                HTTP request durations
//
// Every label has a bounded set of values. For wsproxy_tunnels_closed_total,
// reason is one of CloseReasons: a wsproxy Reason constant
// (wsproxy.ReasonIdleTimeout is "idle timeout"), "peer" when the peers
// ended the tunnel themselves, or "error" when a network error did before
// the proxy gave a reason. For wsproxy_close_codes_total, side is "client"
// or "backend" and code is the close code, or "none" when that side sent no
// close frame (an abrupt end). For wsproxy_rejects_total, status is the
// HTTP status the client got and reason is one of RejectReasons. For
// wsproxy_http_responses_total, target is "none" when no target answered,
// method is a standard method or "other", code is the status or "none"
// when the client left before an answer. The hook series of a target that
// left the proxy's Stats (removed and drained) are exported at one more
// scrape, then dropped, so discovery's churn (new pod addresses on every
// deploy) does not grow the registry without bound.
package wsprom

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsproxy/wsproxy"
)

// Options configure a Collector. The zero value is ready to use.
type Options struct {
	// ConstLabels are added to every metric: give each of several proxies
	// registered in one registry its own, e.g. {"proxy": "chat"}.
	// Default: none.
	ConstLabels prometheus.Labels
	// DurationBuckets are the upper bounds of the tunnel duration
	// histogram, in seconds. Default: DefaultDurationBuckets.
	DurationBuckets []float64
	// RequestDurationBuckets are those of the HTTP request duration
	// histogram (WithHTTP). Default: prometheus.DefBuckets, 5ms to 10s.
	RequestDurationBuckets []float64
}

// DefaultDurationBuckets span WebSocket lifetimes: a second to a day.
var DefaultDurationBuckets = []float64{1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600}

// A Collector is a prometheus.Collector for one Proxy. Pass Hooks to
// wsproxy.New (with wsproxy.WithHooks), then SetProxy with the proxy New
// returned, and register the Collector.
type Collector struct {
	proxy atomic.Pointer[wsproxy.Proxy]

	open, total, failures, bytes, messages, healthy, draining *prometheus.Desc
	httpActive, httpRequests, httpFailures, affinity          *prometheus.Desc
	refused, notEndpoint, tunnelCap                           *prometheus.Desc

	duration   *prometheus.HistogramVec
	closed     *prometheus.CounterVec
	closeCodes *prometheus.CounterVec
	rejects    *prometheus.CounterVec
	responses  *prometheus.CounterVec
	latency    *prometheus.HistogramVec

	mu     sync.Mutex
	missed map[string]int // by target of the hook series: scrapes in a row that did not find it in Stats
}

// New returns a Collector.
func New(opts Options) *Collector {
	buckets, reqBuckets := opts.DurationBuckets, opts.RequestDurationBuckets
	if buckets == nil {
		buckets = DefaultDurationBuckets
	}
	if reqBuckets == nil {
		reqBuckets = prometheus.DefBuckets
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, opts.ConstLabels)
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: opts.ConstLabels}, labels)
	}
	return &Collector{
		open:     desc("wsproxy_tunnels_open", "Tunnels open now, handshakes in progress included.", "target"),
		total:    desc("wsproxy_tunnels_total", "Tunnels opened.", "target"),
		failures: desc("wsproxy_backend_failures_total", "Backend dial and handshake failures.", "target"),
		bytes:    desc("wsproxy_bytes_total", "Bytes written to the receiving side, frame headers included.", "target", "direction"),
		messages: desc("wsproxy_messages_total", "Data messages forwarded.", "target", "direction"),
		healthy:  desc("wsproxy_target_healthy", "1 while the target is in rotation.", "target"),
		draining: desc("wsproxy_target_draining", "1 while a removed target still has tunnels or HTTP requests.", "target"),

		httpActive:   desc("wsproxy_http_requests_active", "HTTP requests in flight to the target (WithHTTP).", "target"),
		httpRequests: desc("wsproxy_http_requests_total", "HTTP requests the target answered (WithHTTP).", "target"),
		httpFailures: desc("wsproxy_http_failures_total", "HTTP tries whose connection to the target failed (WithHTTP).", "target"),
		affinity:     desc("wsproxy_affinity_total", "Requests with a sticky cookie or a hash key, by what became of their affinity.", "result"),
		refused:      desc("wsproxy_upgrades_refused_total", "Upgrades the target answered with a status other than 101.", "target"),
		notEndpoint:  desc("wsproxy_upgrades_not_endpoint_total", "Upgrades the target answered with a 2xx, 3xx or 404: no WebSocket endpoint at that path.", "target"),
		tunnelCap:    desc("wsproxy_max_tunnels_reached_total", "Upgrades refused with 503 because the WithMaxTunnels cap was reached."),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "wsproxy_tunnel_duration_seconds",
			Help:        "How long tunnels lived.",
			ConstLabels: opts.ConstLabels,
			Buckets:     buckets,
		}, []string{"target"}),
		closed:     counter("wsproxy_tunnels_closed_total", "Tunnels ended, by why: a wsproxy Reason, \"peer\" or \"error\".", "target", "reason"),
		closeCodes: counter("wsproxy_close_codes_total", "Close codes sent by each side (\"none\" when a side sent no close frame).", "side", "code"),
		rejects:    counter("wsproxy_rejects_total", "Requests the proxy refused or answered with an error, by HTTP status and reason.", "status", "reason"),
		responses:  counter("wsproxy_http_responses_total", "HTTP requests proxied with WithHTTP, by the status the client got (\"none\" if it left first).", "target", "method", "code"),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "wsproxy_http_request_duration_seconds",
			Help:        "How long HTTP requests took, until the response body was passed on.",
			ConstLabels: opts.ConstLabels,
			Buckets:     reqBuckets,
		}, []string{"target"}),
		missed: map[string]int{},
	}
}

// SetProxy tells the Collector whose Stats to read. Until it is called,
// only the hook metrics are collected.
func (c *Collector) SetProxy(p *wsproxy.Proxy) { c.proxy.Store(p) }

// Hooks feeds the metrics that Stats cannot give. Join them with your own
// by passing several wsproxy.WithHooks options.
func (c *Collector) Hooks() wsproxy.Hooks {
	return wsproxy.Hooks{
		OnClose: func(ci wsproxy.CloseInfo) {
			// Under mu, so that forgetGone either sees the count reset or
			// runs before these series exist.
			c.mu.Lock()
			defer c.mu.Unlock()
			c.missed[ci.Target] = 0
			c.duration.WithLabelValues(ci.Target).Observe(ci.Duration.Seconds())
			c.closed.WithLabelValues(ci.Target, closeReasonLabel(ci)).Inc()
			c.closeCodes.WithLabelValues("client", codeLabel(ci.ClientToBackend.CloseCode)).Inc()
			c.closeCodes.WithLabelValues("backend", codeLabel(ci.BackendToClient.CloseCode)).Inc()
		},
		OnReject: func(_ *http.Request, err error) {
			c.rejects.WithLabelValues(strconv.Itoa(wsproxy.StatusCode(err)), RejectReason(err)).Inc()
		},
		OnRequest: func(ri wsproxy.RequestInfo) {
			c.mu.Lock()
			defer c.mu.Unlock()
			target := ri.Target
			if target == "" {
				target = "none" // no target answered
			} else {
				c.missed[target] = 0
			}
			c.responses.WithLabelValues(target, methodLabel(ri.Method), codeLabel(ri.Status)).Inc()
			c.latency.WithLabelValues(target).Observe(ri.Duration.Seconds())
		},
	}
}

// CloseReasons are the values of wsproxy_tunnels_closed_total's reason
// label: every wsproxy Reason constant, then "peer" and "error".
var CloseReasons = []string{
	wsproxy.ReasonShutdown,
	wsproxy.ReasonIdleTimeout,
	wsproxy.ReasonMaxLifetime,
	wsproxy.ReasonTargetRemoved,
	wsproxy.ReasonBackendNotResponding,
	wsproxy.ReasonClientNotResponding,
	wsproxy.ReasonBackendConnectionLost,
	wsproxy.ReasonClientConnectionLost,
	wsproxy.ReasonHalfCloseTimeout,
	wsproxy.ReasonMessageTooBig,
	wsproxy.ReasonProtocolError,
	"peer",
	"error",
}

// closeReasonLabel is the reason label of a tunnel that ended. A reason
// this package does not know (a newer library's) counts as "other" rather
// than growing the label set.
func closeReasonLabel(ci wsproxy.CloseInfo) string {
	switch {
	case ci.Reason == "" && ci.Err == nil:
		return "peer"
	case ci.Reason == "":
		return "error"
	}
	for _, r := range CloseReasons[:len(CloseReasons)-2] {
		if ci.Reason == r {
			return r
		}
	}
	return "other"
}

// methodLabel bounds the method label: a client may send any token as a
// method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

func codeLabel(code int) string {
	if code == 0 {
		return "none"
	}
	return strconv.Itoa(code)
}

// rejectReasons maps the library's refusal errors to label values, in the
// order they are tried (a BackendError wraps ErrDial and its kin).
var rejectReasons = []struct {
	err  error
	name string
}{
	{wsproxy.ErrNotWebSocket, "not_websocket"},
	{wsproxy.ErrBadHandshake, "bad_handshake"},
	{wsproxy.ErrBadVersion, "bad_version"},
	{wsproxy.ErrOriginDenied, "origin"},
	{wsproxy.ErrShuttingDown, "shutting_down"},
	{wsproxy.ErrNoTargetAvailable, "no_target"},
	{wsproxy.ErrTooManyTunnels, "too_many_tunnels"},
	{wsproxy.ErrRateLimited, "rate_limited"},
	{wsproxy.ErrNotHijackable, "not_hijackable"},
	{wsproxy.ErrRewrite, "rewrite"},
	{wsproxy.ErrDial, "dial"},
	{wsproxy.ErrBackendHandshake, "backend_handshake"},
	{wsproxy.ErrBackendRequest, "backend_request"},
	{wsproxy.ErrInvalidUpgrade, "invalid_upgrade"},
	{wsproxy.ErrUpgradeRefused, "backend_refused"},
}

// RejectReasons are the values of wsproxy_rejects_total's reason label;
// "other" is a refusal without a wsproxy error, such as a client that went
// away before its 101 was written.
var RejectReasons = func() []string {
	var names []string
	for _, r := range rejectReasons {
		names = append(names, r.name)
	}
	return append(names, "other")
}()

// RejectReason returns the reason label for an error given to
// Hooks.OnReject.
func RejectReason(err error) string {
	for _, r := range rejectReasons {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.open, c.total, c.failures, c.bytes, c.messages, c.healthy, c.draining,
		c.httpActive, c.httpRequests, c.httpFailures, c.affinity, c.refused, c.notEndpoint, c.tunnelCap} {
		ch <- d
	}
	for _, v := range c.vecs() {
		v.Describe(ch)
	}
}

// vecs are the metrics fed by the hooks.
func (c *Collector) vecs() []prometheus.Collector {
	return []prometheus.Collector{c.duration, c.closed, c.closeCodes, c.rejects, c.responses, c.latency}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if p := c.proxy.Load(); p != nil {
		s := p.Stats()
		present := make(map[string]bool, len(s.Targets))
		for _, t := range s.Targets {
			present[t.Target] = true
			c.collectTarget(ch, t)
		}
		c.collectAffinity(ch, s.Affinity)
		ch <- prometheus.MustNewConstMetric(c.tunnelCap, prometheus.CounterValue, float64(s.MaxTunnelsReached))
		c.forgetGone(present)
	}
	for _, v := range c.vecs() {
		v.Collect(ch)
	}
}

func (c *Collector) collectAffinity(ch chan<- prometheus.Metric, a wsproxy.AffinityStats) {
	for _, r := range []struct {
		result string
		n      int64
	}{
		{"kept", a.Kept}, {"assigned", a.Assigned}, {"unknown", a.Unknown}, {"down", a.Down},
		{"full", a.Full}, {"failed", a.Failed}, {"spilled", a.Spilled},
	} {
		ch <- prometheus.MustNewConstMetric(c.affinity, prometheus.CounterValue, float64(r.n), r.result)
	}
}

func (c *Collector) collectTarget(ch chan<- prometheus.Metric, t wsproxy.TargetStats) {
	metric := func(d *prometheus.Desc, vt prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, vt, v, append([]string{t.Target}, labels...)...)
	}
	metric(c.open, prometheus.GaugeValue, float64(t.Open))
	metric(c.total, prometheus.CounterValue, float64(t.Total))
	metric(c.failures, prometheus.CounterValue, float64(t.Failures))
	metric(c.bytes, prometheus.CounterValue, float64(t.ClientToBackend.Bytes), "client_to_backend")
	metric(c.bytes, prometheus.CounterValue, float64(t.BackendToClient.Bytes), "backend_to_client")
	metric(c.messages, prometheus.CounterValue, float64(t.ClientToBackend.Messages), "client_to_backend")
	metric(c.messages, prometheus.CounterValue, float64(t.BackendToClient.Messages), "backend_to_client")
	metric(c.healthy, prometheus.GaugeValue, bool01(t.Healthy))
	metric(c.draining, prometheus.GaugeValue, bool01(t.Draining))
	metric(c.httpActive, prometheus.GaugeValue, float64(t.HTTPActive))
	metric(c.httpRequests, prometheus.CounterValue, float64(t.HTTPRequests))
	metric(c.httpFailures, prometheus.CounterValue, float64(t.HTTPFailures))
	metric(c.refused, prometheus.CounterValue, float64(t.Refused))
	metric(c.notEndpoint, prometheus.CounterValue, float64(t.NotEndpoint))
}

// forgetGone drops the hook series of targets that two scrapes in a row did
// not find in Stats, so the first of them still exported their last counts
// (a tunnel's OnClose may run just after its target left Stats; it starts
// the count again).
func (c *Collector) forgetGone(present map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, n := range c.missed {
		switch {
		case present[t]:
			c.missed[t] = 0
		case n == 0:
			c.missed[t] = 1
		default:
			c.duration.DeleteLabelValues(t)
			c.latency.DeleteLabelValues(t)
			c.closed.DeletePartialMatch(prometheus.Labels{"target": t})
			c.responses.DeletePartialMatch(prometheus.Labels{"target": t})
			delete(c.missed, t)
		}
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

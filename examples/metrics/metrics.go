package main

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsproxy/wsproxy"
)

// Collector exports a Proxy's Stats and hooks as Prometheus metrics.
// Register it, and pass Hooks() to wsproxy.New with wsproxy.WithHooks.
type Collector struct {
	proxy *wsproxy.Proxy

	duration   *prometheus.HistogramVec
	closeCodes *prometheus.CounterVec
	rejects    *prometheus.CounterVec
}

var (
	descOpen     = prometheus.NewDesc("wsproxy_tunnels_open", "Tunnels open now, handshakes in progress included.", []string{"target"}, nil)
	descTotal    = prometheus.NewDesc("wsproxy_tunnels_total", "Tunnels opened.", []string{"target"}, nil)
	descFailures = prometheus.NewDesc("wsproxy_backend_failures_total", "Backend dial and handshake failures.", []string{"target"}, nil)
	descBytes    = prometheus.NewDesc("wsproxy_bytes_total", "Bytes written to the receiving side, frame headers included.", []string{"target", "direction"}, nil)
	descMessages = prometheus.NewDesc("wsproxy_messages_total", "Data messages forwarded.", []string{"target", "direction"}, nil)
	descHealthy  = prometheus.NewDesc("wsproxy_target_healthy", "1 while the target is in rotation.", []string{"target"}, nil)
	descDraining = prometheus.NewDesc("wsproxy_target_draining", "1 while a removed target still has tunnels.", []string{"target"}, nil)
	descRejected = prometheus.NewDesc("wsproxy_rejected_total", "Upgrade requests that did not become tunnels.", nil, nil)
)

// NewCollector returns a collector; set its proxy with SetProxy once New
// returned (the hooks must exist before the proxy does).
func NewCollector() *Collector {
	return &Collector{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wsproxy_tunnel_duration_seconds",
			Help:    "How long tunnels lived.",
			Buckets: []float64{1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600},
		}, []string{"target"}),
		closeCodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsproxy_close_codes_total",
			Help: "Close codes sent by each side (\"none\" when a side sent no close frame).",
		}, []string{"side", "code"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsproxy_rejects_total",
			Help: "Refused upgrade requests by HTTP status and reason.",
		}, []string{"status", "reason"}),
	}
}

// SetProxy tells the collector which proxy's Stats to read.
func (c *Collector) SetProxy(p *wsproxy.Proxy) { c.proxy = p }

// Hooks feeds the histogram and the counters that Stats cannot give.
func (c *Collector) Hooks() wsproxy.Hooks {
	return wsproxy.Hooks{
		OnClose: func(ci wsproxy.CloseInfo) {
			c.duration.WithLabelValues(ci.Target).Observe(ci.Duration.Seconds())
			c.closeCodes.WithLabelValues("client", codeLabel(ci.ClientToBackend.CloseCode)).Inc()
			c.closeCodes.WithLabelValues("backend", codeLabel(ci.BackendToClient.CloseCode)).Inc()
		},
		OnReject: func(_ *http.Request, err error) {
			c.rejects.WithLabelValues(strconv.Itoa(wsproxy.StatusCode(err)), reasonLabel(err)).Inc()
		},
	}
}

func codeLabel(code int) string {
	if code == 0 {
		return "none"
	}
	return strconv.Itoa(code)
}

// reasonLabel maps an error to a small, fixed set of label values.
func reasonLabel(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{wsproxy.ErrOriginDenied, "origin"},
		{wsproxy.ErrBadHandshake, "bad_handshake"},
		{wsproxy.ErrBadVersion, "bad_version"},
		{wsproxy.ErrNotWebSocket, "not_websocket"},
		{wsproxy.ErrShuttingDown, "shutting_down"},
		{wsproxy.ErrNoTargetAvailable, "no_target"},
		{wsproxy.ErrTooManyTunnels, "too_many_tunnels"},
		{wsproxy.ErrRateLimited, "rate_limited"},
		{wsproxy.ErrUpgradeRefused, "backend_refused"},
		{wsproxy.ErrInvalidUpgrade, "invalid_upgrade"},
		{wsproxy.ErrDial, "dial"},
		{wsproxy.ErrBackendHandshake, "backend_handshake"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpen, descTotal, descFailures, descBytes, descMessages, descHealthy, descDraining, descRejected} {
		ch <- d
	}
	c.duration.Describe(ch)
	c.closeCodes.Describe(ch)
	c.rejects.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.proxy != nil {
		s := c.proxy.Stats()
		for _, t := range s.Targets {
			ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(t.Open), t.Target)
			ch <- prometheus.MustNewConstMetric(descTotal, prometheus.CounterValue, float64(t.Total), t.Target)
			ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(t.Failures), t.Target)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.ClientToBackend.Bytes), t.Target, "client_to_backend")
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(t.BackendToClient.Bytes), t.Target, "backend_to_client")
			ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(t.ClientToBackend.Messages), t.Target, "client_to_backend")
			ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(t.BackendToClient.Messages), t.Target, "backend_to_client")
			ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, bool01(t.Healthy), t.Target)
			ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, bool01(t.Draining), t.Target)
		}
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(s.Rejected))
	}
	c.duration.Collect(ch)
	c.closeCodes.Collect(ch)
	c.rejects.Collect(ch)
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

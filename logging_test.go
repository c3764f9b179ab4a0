package wsproxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// logRecorder is a slog.Handler that keeps every record, at every level.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// find returns the records with message msg.
func (h *logRecorder) find(msg string) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.records {
		if r.Message == msg {
			out = append(out, r)
		}
	}
	return out
}

func withRecorder() (*logRecorder, Option) {
	h := &logRecorder{}
	return h, WithLogger(slog.New(h))
}

// attrs returns a record's attributes by key.
func attrs(r slog.Record) map[string]slog.Value {
	m := make(map[string]slog.Value)
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value
		return true
	})
	return m
}

func keysOf(r slog.Record) []string {
	var keys []string
	for k := range attrs(r) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestTunnelClosedRecordKeys: the "tunnel closed" record carries the keys
// the README lists.
func TestTunnelClosedRecordKeys(t *testing.T) {
	t.Parallel()
	logs, logOpt := withRecorder()
	closed := make(chan CloseInfo, 1)
	_, url := newProxy(t, []string{newEcho(t)}, logOpt, WithHooks(Hooks{OnClose: func(ci CloseInfo) { closed <- ci }}),
		WithMaxMessageSize(4), WithCloseTimeout(50*time.Millisecond))
	c := dial(t, url+"/chat")
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("too long")))
	<-closed
	recs := logs.find("wsproxy: tunnel closed")
	require.Len(t, recs, 1)
	assert.Equal(t, slog.LevelDebug, recs[0].Level)
	assert.Equal(t, []string{"bytes_in", "bytes_out", "duration", "path", "reason", "remote_addr", "target"}, keysOf(recs[0]))
	assert.Equal(t, "/chat", attrs(recs[0])["path"].String())
}

// TestWarnLimiter: the first warning of a kind is written, then at most one
// every warnEvery, saying how many were left out; kinds do not share a
// budget.
func TestWarnLimiter(t *testing.T) {
	t.Parallel()
	var l warnLimiter
	t0 := time.Now()
	tests := []struct {
		name           string
		kind           warnKind
		at             time.Duration
		want           bool
		wantSuppressed int64
	}{
		{"first", warnTunnelCap, 0, true, 0},
		{"at once after", warnTunnelCap, time.Millisecond, false, 0},
		{"later, within", warnTunnelCap, warnEvery - time.Millisecond, false, 0},
		{"other kind", warnNotHijackable, time.Millisecond, true, 0},
		{"interval over", warnTunnelCap, warnEvery, true, 2},
		{"held again", warnTunnelCap, warnEvery + time.Second, false, 0},
		{"long after", warnTunnelCap, time.Hour, true, 1},
	}
	for _, tt := range tests {
		ok, n := l.allow(tt.kind, t0.Add(tt.at))
		assert.Equal(t, tt.want, ok, tt.name)
		assert.Equal(t, tt.wantSuppressed, n, tt.name)
	}
}

// warnings returns the warn records with message msg.
func (h *logRecorder) warnings(msg string) []slog.Record {
	var out []slog.Record
	for _, r := range h.find(msg) {
		if r.Level == slog.LevelWarn {
			out = append(out, r)
		}
	}
	return out
}

// TestTunnelCapWarns: upgrades refused at the global cap are a warning,
// once for a burst, and counted in Stats; the per-client cap is not.
func TestTunnelCapWarns(t *testing.T) {
	t.Parallel()
	logs, logOpt := withRecorder()
	p, url := newProxy(t, []string{newEcho(t)}, WithMaxTunnels(1), logOpt, trustLoopback)
	a, _ := dialAs(t, t, url, "192.0.2.1")
	require.NotNil(t, a)
	for range 5 {
		_, resp := dialAs(t, t, url, "192.0.2.2")
		require.NotNil(t, resp)
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	}
	recs := logs.warnings("wsproxy: tunnel cap reached, upgrades refused with 503")
	require.Len(t, recs, 1, "a burst is one record")
	assert.Equal(t, int64(1), attrs(recs[0])["max_tunnels"].Int64())
	assert.Equal(t, int64(5), p.Stats().MaxTunnelsReached)

	logs2, logOpt2 := withRecorder()
	p2, url2 := newProxy(t, []string{newEcho(t)}, WithMaxTunnelsPerIP(1), logOpt2, trustLoopback)
	b, _ := dialAs(t, t, url2, "192.0.2.1")
	require.NotNil(t, b)
	_, resp := dialAs(t, t, url2, "192.0.2.1")
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Empty(t, logs2.warnings("wsproxy: tunnel cap reached, upgrades refused with 503"), "one client's cap is the client's business")
	assert.Zero(t, p2.Stats().MaxTunnelsReached)
}

// TestNotHijackableWarns: a middleware that hides the Hijacker is a
// warning and a Stats counter, over HTTP/1.1 and HTTP/2.
func TestNotHijackableWarns(t *testing.T) {
	t.Parallel()
	logs, logOpt := withRecorder()
	p, err := New([]string{newEcho(t)}, logOpt)
	require.NoError(t, err)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.ServeHTTP(struct{ http.ResponseWriter }{w}, r)
	}))
	t.Cleanup(func() { p.Close(); s.Close() })
	url := "ws://" + s.Listener.Addr().String()
	resp, _, _ := rawRequest(t, url, upgradeRequest(url))
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	recs := logs.warnings("wsproxy: cannot take over the connection, upgrades refused with 500")
	require.Len(t, recs, 1)
	assert.Equal(t, "HTTP/1.1", attrs(recs[0])["proto"].String())
	assert.Equal(t, int64(1), p.Stats().NotHijackable)

	logs2, logOpt2 := withRecorder()
	f := newH2FixtureWith(t, func(s *http.Server) {
		p := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.ServeHTTP(noUnwrap{w}, r)
		})
	}, []string{newEcho(t)}, logOpt2)
	_, resp, err = f.dialH2(t, "/", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	recs = logs2.warnings("wsproxy: cannot take over the connection, upgrades refused with 500")
	require.Len(t, recs, 1)
	assert.Equal(t, "HTTP/2.0", attrs(recs[0])["proto"].String())
	assert.Equal(t, int64(1), f.p.Stats().NotHijackable)
}

// TestBackendRefusalsWarnAndHealth: what a backend's non-101 answer does
// to the log, Stats and the target's health. Two targets, so that passive
// health may take one out.
func TestBackendRefusalsWarnAndHealth(t *testing.T) {
	t.Parallel()
	const (
		notEndpointMsg = "wsproxy: backend answered the upgrade as plain HTTP: not a WebSocket endpoint at this path?"
		refusedMsg     = "wsproxy: backend refused the upgrade"
	)
	tests := []struct {
		name        string
		give        int
		wantWarn    string // "" for debug only
		wantHealthy bool
	}{
		{"200: a page", http.StatusOK, notEndpointMsg, true},
		{"302: a redirect", http.StatusFound, notEndpointMsg, true},
		{"404: nothing there", http.StatusNotFound, notEndpointMsg, true},
		{"401: the app's answer", http.StatusUnauthorized, "", true},
		{"403: the app's answer", http.StatusForbidden, "", true},
		{"501: the client's request", http.StatusNotImplemented, "", true},
		{"500: broken", http.StatusInternalServerError, refusedMsg, false},
		{"503: overloaded", http.StatusServiceUnavailable, refusedMsg, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			backend := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.give == http.StatusFound {
					w.Header().Set("Location", "/login")
				}
				w.WriteHeader(tt.give)
			}))
			logs, logOpt := withRecorder()
			onReject, errs := rejects()
			p, url := newProxy(t, []string{backend, newEcho(t)}, logOpt, onReject, WithBalancer(firstTarget{}))
			for range 3 {
				resp, _, _ := rawRequest(t, url, upgradeRequest(url))
				if resp.StatusCode == tt.give {
					<-errs // the status arrives before the proxy counted it
				} else {
					assert.False(t, tt.wantHealthy, "only a target taken out sends the next upgrade elsewhere")
					assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
				}
			}
			ts := targetStats(p, backend)
			assert.Equal(t, tt.wantHealthy, ts.Healthy)
			if tt.wantHealthy {
				assert.Equal(t, int64(3), ts.Refused)
				assert.Zero(t, ts.Failures)
			} else {
				assert.Equal(t, int64(1), ts.Refused, "then the target is out for its cool-down")
				assert.Equal(t, int64(1), ts.Failures)
			}
			if tt.wantWarn == notEndpointMsg {
				assert.Equal(t, ts.Refused, ts.NotEndpoint)
			} else {
				assert.Zero(t, ts.NotEndpoint)
			}
			if tt.wantWarn == "" {
				assert.Empty(t, logs.warnings(notEndpointMsg))
				assert.Empty(t, logs.warnings(refusedMsg))
				return
			}
			recs := logs.warnings(tt.wantWarn)
			require.Len(t, recs, 1, "rate-limited: one record")
			a := attrs(recs[0])
			assert.Equal(t, backend, a["target"].String())
			assert.Equal(t, int64(tt.give), a["status"].Int64())
			assert.Equal(t, "/", a["path"].String())
		})
	}
}

// TestH2NotEndpointWarns: over HTTP/2 a 2xx answer becomes 502; it is
// warned about and counted, and does not take the target out.
func TestH2NotEndpointWarns(t *testing.T) {
	t.Parallel()
	plain := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html>not a websocket</html>")
	}))
	logs, logOpt := withRecorder()
	f := newH2Fixture(t, []string{plain, newEcho(t)}, logOpt, WithBalancer(firstTarget{}))
	for range 2 {
		_, resp, err := f.dialH2(t, "/", nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	}
	ts := targetStats(f.p, plain)
	assert.True(t, ts.Healthy)
	assert.Equal(t, int64(2), ts.Refused)
	assert.Equal(t, int64(2), ts.NotEndpoint)
	require.Len(t, logs.warnings("wsproxy: backend answered the upgrade as plain HTTP: not a WebSocket endpoint at this path?"), 1)
}

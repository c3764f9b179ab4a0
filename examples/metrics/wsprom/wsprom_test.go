package wsprom

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/leakcheck"
	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// libraryDir is the wsproxy source this module builds against (the go.mod
// replace).
const libraryDir = "../../.."

// fixture is a proxy in front of a backend (an echo server for upgrades, a
// page for other requests) with a Collector
// registered in a pedantic registry (it checks Collect against Describe).
type fixture struct {
	p      *wsproxy.Proxy
	reg    *prometheus.Registry
	url    string // the proxy's ws:// URL
	target string
}

func newFixture(t *testing.T, opts ...wsproxy.Option) *fixture {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			wstest.EchoHandler().ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "page")
	}))
	t.Cleanup(backend.Close)
	target := "ws://" + backend.Listener.Addr().String()
	c := New(Options{ConstLabels: prometheus.Labels{"proxy": "test"}})
	p, err := wsproxy.New([]string{target}, append(opts, wsproxy.WithHooks(c.Hooks()))...)
	require.NoError(t, err)
	c.SetProxy(p)
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	return &fixture{p: p, reg: reg, url: "ws://" + srv.Listener.Addr().String(), target: target}
}

func (f *fixture) dial(t *testing.T, extra ...string) (*wstest.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := wstest.Dial(ctx, f.url, nil, nil, extra...)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return c, err
}

// scrape gathers the registry: each sample by name{label="value",...}
// (labels sorted, "proxy" left out), histograms by their _count.
func (f *fixture) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "proxy" {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
			}
			sort.Strings(labels)
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[mf.GetName()+"_count{"+strings.Join(labels, ",")+"}"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// labelValues lists the values a label takes in one metric.
func (f *fixture) labelValues(t *testing.T, metric, label string) []string {
	t.Helper()
	mfs, err := f.reg.Gather()
	require.NoError(t, err)
	var vals []string
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					vals = append(vals, l.GetValue())
				}
			}
		}
	}
	return vals
}

// TestCollector: traffic, tunnels ending in several ways and a refusal,
// read back from a scrape.
func TestCollector(t *testing.T) {
	// The close timeout is short: the proxy ignores the close frames of
	// clients that broke a rule, and waits for it.
	f := newFixture(t, wsproxy.WithMaxMessageSize(100), wsproxy.WithCloseTimeout(50*time.Millisecond))
	tl := fmt.Sprintf("target=%q", f.target)

	c, err := f.dial(t)
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("hello")))
		_, _, err := c.ReadMessage()
		require.NoError(t, err)
	}
	m := f.scrape(t)
	assert.Equal(t, 1.0, m["wsproxy_tunnels_open{"+tl+"}"])
	assert.Equal(t, 3.0, m[`wsproxy_messages_total{direction="client_to_backend",`+tl+"}"])
	assert.Equal(t, 3.0, m[`wsproxy_messages_total{direction="backend_to_client",`+tl+"}"])
	assert.Equal(t, 1.0, m["wsproxy_target_healthy{"+tl+"}"])
	assert.Equal(t, 0.0, m["wsproxy_target_draining{"+tl+"}"])

	// The client closes: the peers ended it.
	require.NoError(t, c.WriteClose(1000, ""))
	assert.Equal(t, 1000, c.ReadClose())
	// Too big a message, then a protocol error (an unmasked frame).
	big, err := f.dial(t)
	require.NoError(t, err)
	require.NoError(t, big.WriteMessage(wsframe.OpText, make([]byte, 101)))
	assert.Equal(t, wsframe.CloseMessageTooBig, big.ReadClose())
	bad, err := f.dial(t)
	require.NoError(t, err)
	_, err = bad.Conn.Write(wstest.AppendFrame(nil, wstest.Frame{Fin: true, Op: wsframe.OpText, Payload: []byte("bare")}, false))
	require.NoError(t, err)
	assert.Equal(t, wsframe.CloseProtocolError, bad.ReadClose())
	// A refused origin.
	_, err = f.dial(t, "Origin: http://evil.example")
	require.Error(t, err)

	require.Eventually(t, func() bool { return f.p.Stats().Open == 0 }, 5*time.Second, 5*time.Millisecond)
	m = f.scrape(t)
	assert.Equal(t, 3.0, m["wsproxy_tunnels_total{"+tl+"}"])
	assert.Equal(t, 3.0, m["wsproxy_tunnel_duration_seconds_count{"+tl+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_tunnels_closed_total{reason="peer",`+tl+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_tunnels_closed_total{reason="message too big",`+tl+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_tunnels_closed_total{reason="protocol error",`+tl+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_close_codes_total{code="1000",side="client"}`])
	assert.Equal(t, 2.0, m[`wsproxy_close_codes_total{code="none",side="client"}`], "the proxy reads no more frames, close frames included, from a client that broke a rule")
	assert.Equal(t, 1.0, m[`wsproxy_rejects_total{reason="origin",status="403"}`])

	for _, r := range f.labelValues(t, "wsproxy_tunnels_closed_total", "reason") {
		assert.Contains(t, CloseReasons, r)
	}
	problems, err := testutil.CollectAndLint(newCollectorFor(f.p))
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func newCollectorFor(p *wsproxy.Proxy) *Collector {
	c := New(Options{})
	c.SetProxy(p)
	return c
}

// TestShutdownReason: Shutdown's tunnels are counted as "shutdown".
func TestShutdownReason(t *testing.T) {
	f := newFixture(t)
	c, err := f.dial(t)
	require.NoError(t, err)
	go c.ReadClose() // answers the proxy's close frame
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, f.p.Shutdown(ctx))
	assert.Equal(t, 1.0, f.scrape(t)[fmt.Sprintf(`wsproxy_tunnels_closed_total{reason="shutdown",target=%q}`, f.target)])
}

// TestCloseReasonsMatchLibrary: CloseReasons holds exactly the library's
// Reason constants (read from its source), plus "peer" and "error", so a
// reason the library adds cannot be counted as "other" unnoticed.
func TestCloseReasonsMatchLibrary(t *testing.T) {
	var lib []string
	for name, value := range libraryDecls(t, token.CONST, "Reason") {
		lit, ok := value.(*ast.BasicLit)
		require.True(t, ok, "%s is not a string literal", name)
		v, err := strconv.Unquote(lit.Value)
		require.NoError(t, err)
		lib = append(lib, v)
	}
	require.NotEmpty(t, lib)
	assert.ElementsMatch(t, append(lib, "peer", "error"), CloseReasons)
	for _, r := range lib {
		assert.Equal(t, r, closeReasonLabel(wsproxy.CloseInfo{Reason: r}))
	}
	assert.Equal(t, "peer", closeReasonLabel(wsproxy.CloseInfo{}))
	assert.Equal(t, "error", closeReasonLabel(wsproxy.CloseInfo{Err: errors.New("connection reset")}))
	assert.Equal(t, "other", closeReasonLabel(wsproxy.CloseInfo{Reason: "some new reason"}))
}

// TestRejectReasons: every error sentinel of the library that a refusal can
// carry has its own label, wrapped as the proxy wraps them.
func TestRejectReasons(t *testing.T) {
	// Errors New returns: they never reach OnReject.
	notRejects := []string{"ErrNoTargets", "ErrBadTarget", "ErrBadOption"}
	src, err := os.ReadFile("wsprom.go")
	require.NoError(t, err)
	var labelled []string // the sentinels rejectReasons lists
	for _, m := range regexp.MustCompile(`\{wsproxy\.(Err\w+),`).FindAllStringSubmatch(string(src), -1) {
		labelled = append(labelled, m[1])
	}
	require.Len(t, labelled, len(rejectReasons))
	var lib []string
	for name := range libraryDecls(t, token.VAR, "Err") {
		if !slices.Contains(notRejects, name) {
			lib = append(lib, name)
		}
	}
	assert.ElementsMatch(t, lib, labelled)

	tests := []struct {
		name string
		give error
		want string
	}{
		{name: "dial", give: &wsproxy.BackendError{Target: "ws://a", Op: "dial", Err: fmt.Errorf("%w: refused", wsproxy.ErrDial)}, want: "dial"},
		{name: "refused", give: &wsproxy.BackendError{Target: "ws://a", Op: "upgrade", Status: 404, Err: fmt.Errorf("%w: status 404", wsproxy.ErrUpgradeRefused)}, want: "backend_refused"},
		{name: "origin", give: fmt.Errorf("%w: http://evil.example", wsproxy.ErrOriginDenied), want: "origin"},
		{name: "no sentinel", give: errors.New("writing 101 to client: broken pipe"), want: "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, RejectReason(tt.give))
			assert.Contains(t, RejectReasons, tt.want)
		})
	}
}

// libraryDecls returns the library's top-level names declared with tok
// (token.CONST, token.VAR) that start with prefix, with their values.
func libraryDecls(t *testing.T, tok token.Token, prefix string) map[string]ast.Expr {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(libraryDir, "*.go"))
	require.NoError(t, err)
	decls := map[string]ast.Expr{}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, 0)
		require.NoError(t, err)
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != tok {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if strings.HasPrefix(name.Name, prefix) && i < len(vs.Values) {
						decls[name.Name] = vs.Values[i]
					}
				}
			}
		}
	}
	require.NotEmpty(t, decls, "no %s%s... in the library's source at %s (the go.mod replace)", tok, prefix, libraryDir)
	return decls
}

// TestRemovedTargetSeriesDropped: once a target left Stats, its hook
// series are exported at one more scrape, then dropped.
func TestRemovedTargetSeriesDropped(t *testing.T) {
	f := newFixture(t)
	c, err := f.dial(t)
	require.NoError(t, err)
	require.NoError(t, c.WriteClose(1000, ""))
	c.ReadClose()
	require.Eventually(t, func() bool { return f.p.Stats().Open == 0 }, 5*time.Second, 5*time.Millisecond)
	closed := fmt.Sprintf(`wsproxy_tunnels_closed_total{reason="peer",target=%q}`, f.target)
	duration := fmt.Sprintf(`wsproxy_tunnel_duration_seconds_count{target=%q}`, f.target)
	require.Contains(t, f.scrape(t), closed)

	other := httptest.NewServer(wstest.EchoHandler())
	t.Cleanup(other.Close)
	require.NoError(t, f.p.SetTargets([]string{"ws://" + other.Listener.Addr().String()}))
	m := f.scrape(t)
	assert.Equal(t, 1.0, m[closed], "kept at the first scrape without the target")
	assert.Equal(t, 1.0, m[duration])
	m = f.scrape(t)
	assert.NotContains(t, m, closed)
	assert.NotContains(t, m, duration)
}

// TestHTTPMetrics: requests proxied with WithHTTP, by target, method and
// status, and one that no target answered.
func TestHTTPMetrics(t *testing.T) {
	f := newFixture(t, wsproxy.WithHTTP())
	tl := fmt.Sprintf("target=%q", f.target)
	page := "http" + strings.TrimPrefix(f.url, "ws")
	for _, method := range []string{"GET", "GET", "BREW"} {
		req, err := http.NewRequest(method, page+"/", nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	m := f.scrape(t)
	assert.Equal(t, 2.0, m[`wsproxy_http_responses_total{code="200",method="GET",`+tl+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_http_responses_total{code="200",method="other",`+tl+"}"], "a method outside the known set")
	assert.Equal(t, 3.0, m["wsproxy_http_requests_total{"+tl+"}"])
	assert.Equal(t, 0.0, m["wsproxy_http_requests_active{"+tl+"}"])
	assert.Equal(t, 3.0, m["wsproxy_http_request_duration_seconds_count{"+tl+"}"])

	// A backend that hangs up on every request: the client gets 502, with
	// no target named as having answered.
	hangUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
	}))
	t.Cleanup(hangUp.Close)
	require.NoError(t, f.p.SetTargets([]string{"ws://" + hangUp.Listener.Addr().String()}))
	resp, err := http.Get(page + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	m = f.scrape(t)
	assert.Equal(t, 1.0, m[`wsproxy_http_responses_total{code="502",method="GET",target="none"}`])
	assert.Equal(t, 1.0, m[`wsproxy_rejects_total{reason="backend_request",status="502"}`])
}

// TestRefusedUpgrades: a target answering upgrades with 404 (a wrong path)
// and the global tunnel cap, each in its own counter.
func TestRefusedUpgrades(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	f := newFixture(t, wsproxy.WithMaxTunnels(1))
	require.NoError(t, f.p.SetTargets([]string{f.target, "ws://" + notFound.Listener.Addr().String()}))
	c, err := f.dial(t) // round robin: the echo backend, the only tunnel the cap allows
	require.NoError(t, err)
	_, err = f.dial(t)
	require.Error(t, err, "over the cap")
	c.Close()
	require.Eventually(t, func() bool { return f.p.Stats().Open == 0 }, 5*time.Second, 5*time.Millisecond)
	_, err = f.dial(t)
	require.Error(t, err, "the 404 target's turn")

	m := f.scrape(t)
	nf := fmt.Sprintf("target=%q", "ws://"+notFound.Listener.Addr().String())
	assert.Equal(t, 1.0, m["wsproxy_max_tunnels_reached_total{}"])
	assert.Equal(t, 1.0, m[`wsproxy_rejects_total{reason="too_many_tunnels",status="503"}`])
	assert.Equal(t, 1.0, m["wsproxy_upgrades_refused_total{"+nf+"}"])
	assert.Equal(t, 1.0, m["wsproxy_upgrades_not_endpoint_total{"+nf+"}"])
	assert.Equal(t, 1.0, m[`wsproxy_rejects_total{reason="backend_refused",status="404"}`])
}

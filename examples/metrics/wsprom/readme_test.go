package wsprom_test

import (
	"bufio"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/examples/metrics/wsprom"
	"github.com/wsproxy/wsproxy/internal/snippet"
)

// TestReadme runs the README's code as written, checks that this README
// and the library's (section Metrics) still show exactly this code, and that its metrics table lists every
// metric the Collector exports, with its type and labels, and no other.
func TestReadme(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "page")
			return
		}
		websocket.Server{Handler: func(c *websocket.Conn) { io.Copy(c, c) }}.ServeHTTP(w, r)
	}))
	t.Cleanup(backend.Close)
	targets := []string{"ws://" + backend.Listener.Addr().String()}
	mux := http.NewServeMux()

	// README: collector
	c := wsprom.New(wsprom.Options{})
	p, err := wsproxy.New(targets, wsproxy.WithHooks(c.Hooks()))
	if err != nil {
		log.Fatal(err)
	}
	c.SetProxy(p)
	reg := prometheus.NewRegistry() // or prometheus.MustRegister(c) for the default registry
	reg.MustRegister(c)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// end README

	mux.Handle("/", p)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})

	ws, err := websocket.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "", srv.URL)
	require.NoError(t, err)
	require.NoError(t, websocket.Message.Send(ws, "hi"))
	var echo string
	require.NoError(t, websocket.Message.Receive(ws, &echo))
	ws.Close()
	_, err = websocket.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "", "http://evil.example")
	require.Error(t, err) // a refusal, so that wsproxy_rejects_total has a series

	resp, err := http.Get(srv.URL + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(body), `wsproxy_messages_total{direction="client_to_backend",target="`+targets[0]+`"} 1`)

	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	self, err := os.ReadFile("readme_test.go")
	require.NoError(t, err)
	shown := snippet.Between(t, string(readme), "<!-- collector: readme_test.go -->\n```go\n", "```")
	code := snippet.Between(t, string(self), "// README: collector\n", "\t// end README")
	assert.Equal(t, shown, snippet.Dedent(code, 1), "README.md's snippet differs from the tested code")
	root, err := os.ReadFile("../../../README.md")
	require.NoError(t, err)
	assert.Equal(t, shown, snippet.Between(t, string(root), "<!-- metrics: examples/metrics/wsprom/readme_test.go -->\n```go\n", "```"),
		"the library README's Metrics snippet differs from the tested code")

	want := readmeTable(t, string(readme))
	got := exported(t, c)
	for name, row := range got {
		if strings.HasPrefix(row, "? ") { // no series to read its type from
			got[name] = strings.SplitN(want[name], " ", 2)[0] + row[1:]
		}
	}
	assert.Equal(t, want, got, "README.md's metrics table against what the Collector describes and exports")
}

// readmeTable reads the Metrics table: name -> "type labels".
func readmeTable(t *testing.T, readme string) map[string]string {
	t.Helper()
	table := snippet.Between(t, readme, "| metric | type | labels | meaning |\n|---|---|---|---|\n", "\n\n")
	rows := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(table))
	for sc.Scan() {
		cells := strings.Split(sc.Text(), "|")
		require.Len(t, cells, 6, sc.Text())
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		labels := strings.ReplaceAll(strings.ReplaceAll(strings.TrimSpace(cells[3]), "`", ""), ",", "")
		rows[name] = strings.TrimSpace(cells[2]) + " " + labels
	}
	return rows
}

// exported is what the Collector describes: name -> "type labels", the
// type from a scrape where the metric has a series (the HTTP ones have
// none without WithHTTP), else "?".
func exported(t *testing.T, c prometheus.Collector) map[string]string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	types := map[string]string{}
	for _, mf := range mfs {
		types[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	descs := make(chan *prometheus.Desc, 64)
	c.Describe(descs)
	close(descs)
	// Desc.String: Desc{fqName: "name", help: "...", constLabels: {}, variableLabels: {a,b}}
	re := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	out := map[string]string{}
	for d := range descs {
		m := re.FindStringSubmatch(d.String())
		require.NotNil(t, m, d.String())
		typ, ok := types[m[1]]
		if !ok {
			typ = "?"
		}
		out[m[1]] = typ + " " + strings.ReplaceAll(m[2], ",", " ")
	}
	return out
}

package interop

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
)

// browserPage runs in Chromium: it opens a WebSocket to /ws of its own
// origin (ws:// or wss://), sends 100 messages of growing size, text and
// binary, checks that all 100 echoes come back intact and in order, then
// asks the backend to close with 4002 and records what it saw in
// window.testResult.
const browserPage = `<!doctype html>
<title>wsproxy browser test</title>
<style>body{font:16px system-ui;margin:2em} #log{white-space:pre}</style>
<h1>wsproxy browser test</h1>
<div id="log"></div>
<script>
const log = (s) => { document.getElementById('log').textContent += s + '\n'; };
const N = 100;
const msg = (i) => {
  const s = 'message ' + i + ' ' + 'x'.repeat(i * 97);
  return i % 2 ? new TextEncoder().encode(s).buffer : s;
};
const same = (a, b) => {
  if (typeof a === 'string' || typeof b === 'string') return a === b;
  const x = new Uint8Array(a), y = new Uint8Array(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
};
const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws?id=browser';
log('connecting to ' + url);
const ws = new WebSocket(url);
ws.binaryType = 'arraybuffer';
let received = 0, mismatched = 0;
ws.onopen = () => { log('open'); for (let i = 0; i < N; i++) ws.send(msg(i)); };
ws.onmessage = (e) => {
  if (!same(msg(received), e.data)) mismatched++;
  received++;
  if (received === N) { log('got ' + N + ' echoes, ' + mismatched + ' wrong'); ws.send('close:4002:server bye'); }
};
ws.onclose = (e) => {
  log('closed ' + e.code + ' ' + e.reason);
  window.testResult = { url, sent: N, received, mismatched, code: e.code, reason: e.reason, wasClean: e.wasClean };
};
</script>
`

// TestBrowser loads a page from a server that embeds wsproxy (the page is
// its WithFallback handler) in headless Chromium, over http and https, and
// checks that 100 messages go through the proxy and back and that the
// backend's close code reaches the page.
func TestBrowser(t *testing.T) {
	b, err := getBrowser(t)
	if err != nil {
		skipOrFail(t, err)
	}
	backend, err := startGorilla(t)
	require.NoError(t, err)
	p, err := wsproxy.New([]string{backend.url}, wsproxy.WithFallback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, browserPage)
	})))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })

	for _, tt := range []struct {
		name   string
		server func(http.Handler) *httptest.Server
	}{
		{"ws", httptest.NewServer},
		{"wss", httptest.NewTLSServer}, // self-signed: Chromium runs with --ignore-certificate-errors
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.server(p)
			t.Cleanup(srv.Close)
			var ans struct {
				Result struct {
					URL        string `json:"url"`
					Sent       int    `json:"sent"`
					Received   int    `json:"received"`
					Mismatched int    `json:"mismatched"`
					Code       int    `json:"code"`
					Reason     string `json:"reason"`
					WasClean   bool   `json:"wasClean"`
				} `json:"result"`
				Error string `json:"error"`
			}
			require.NoError(t, b.do(map[string]any{"op": "run", "page": srv.URL + "/", "timeout": 30000}, 60*time.Second, &ans))
			require.Empty(t, ans.Error)
			r := ans.Result
			assert.True(t, strings.HasPrefix(r.URL, tt.name+"://"), "page used %s", r.URL)
			assert.Equal(t, 100, r.Received, "echoes received")
			assert.Equal(t, 0, r.Mismatched, "echoes that differ from what was sent")
			assert.Equal(t, 4002, r.Code)
			assert.Equal(t, "server bye", r.Reason)
			assert.True(t, r.WasClean)
		})
	}
}

// TestDemoScreenshot refreshes examples/demo/screenshot.png: it runs the
// demo and photographs its page once a message went through. It runs only
// when WSPROXY_SCREENSHOT=1, since it rewrites a committed file.
func TestDemoScreenshot(t *testing.T) {
	if os.Getenv("WSPROXY_SCREENSHOT") != "1" {
		t.Skip("set WSPROXY_SCREENSHOT=1 to refresh examples/demo/screenshot.png")
	}
	b, err := getBrowser(t)
	if err != nil {
		skipOrFail(t, err)
	}
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.Command("go", "build", "-o", bin, "./examples/demo")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	s := bufio.NewScanner(stdout)
	require.True(t, s.Scan(), "demo printed nothing")
	var pageURL string
	for _, f := range strings.Fields(s.Text()) {
		if strings.HasPrefix(f, "http://") {
			pageURL = f
		}
	}
	require.NotEmpty(t, pageURL, "no URL in %q", s.Text())
	go io.Copy(io.Discard, stdout)

	var ans struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	shot := filepath.Join(root, "examples", "demo", "screenshot.png")
	require.NoError(t, b.do(map[string]any{
		"op": "screenshot", "page": pageURL, "path": shot,
		"waitFor": "document.getElementById('status').textContent === 'connected'",
		"chat": []map[string]string{
			{"input": "#text", "text": "Hello from the first tab"},
			{"input": "#text", "text": "Hi! I am on the other backend"},
			{"input": "#text", "text": "Both messages went through wsproxy"},
		},
		"settle": 1500,
	}, 60*time.Second, &ans))
	if ans.Error != "" {
		t.Fatal(errors.New(ans.Error))
	}
	fmt.Println("wrote", shot)
}

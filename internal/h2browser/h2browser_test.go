//go:build unix

// Chromium runs in a process group of its own, which this test kills as a
// whole: a Unix notion. The test is meant for the Linux CI machine.

package h2browser

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy"
	"github.com/wsproxy/wsproxy/internal/leakcheck"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// TestMain restarts the test binary with GODEBUG=http2xconnect=1, which
// net/http reads from the environment in its init: without it Go's HTTP/2
// server does not offer extended CONNECT and Chromium would fall back to
// HTTP/1.1 for the WebSocket.
func TestMain(m *testing.M) {
	const setting = "http2xconnect=1"
	if old := os.Getenv("GODEBUG"); !strings.Contains(old, setting) {
		if exe, err := os.Executable(); err == nil {
			env := []string{"GODEBUG=" + strings.TrimPrefix(old+","+setting, ",")}
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "GODEBUG=") {
					env = append(env, kv)
				}
			}
			syscall.Exec(exe, os.Args, env) // returns only on failure
		}
	}
	leakcheck.Main(m)
}

// page opens a WebSocket to /ws of its own origin, sends a text message and
// a 256 KiB binary one, checks both echoes, closes with 4000 and posts what
// it saw to /result.
const page = `<!doctype html>
<title>wsproxy over HTTP/2</title>
<script>
const r = {};
const big = new Uint8Array(256 * 1024).map((_, i) => i % 251);
const ws = new WebSocket('wss://' + location.host + '/ws?from=chromium');
ws.binaryType = 'arraybuffer';
let step = 0;
ws.onopen = () => { r.protocol = ws.protocol; ws.send('hello over h2'); };
ws.onmessage = (e) => {
  if (step++ === 0) {
    r.text = e.data;
    ws.send(big);
    return;
  }
  const got = new Uint8Array(e.data);
  r.bigOK = got.length === big.length && got.every((v, i) => v === big[i]);
  ws.close(4000, 'done');
};
ws.onerror = () => { r.error = true; };
ws.onclose = (e) => {
  r.code = e.code;
  r.reason = e.reason;
  r.clean = e.wasClean;
  fetch('/result', {method: 'POST', body: JSON.stringify(r)});
};
</script>
`

type pageResult struct {
	Text     string `json:"text"`
	BigOK    bool   `json:"bigOK"`
	Error    bool   `json:"error"`
	Code     int    `json:"code"`
	Reason   string `json:"reason"`
	Clean    bool   `json:"clean"`
	Protocol string `json:"protocol"`
}

// TestChromiumWebSocketOverHTTP2 serves a page over HTTP/2 from a server
// that embeds wsproxy and lets Chromium open a WebSocket from it. Chromium
// sends the WebSocket as an extended CONNECT on the page's HTTP/2
// connection when the server offers SETTINGS_ENABLE_CONNECT_PROTOCOL; the
// OnUpgrade hook's TunnelInfo.Proto says which protocol the tunnel's client
// side used, and the test insists on "HTTP/2.0".
func TestChromiumWebSocketOverHTTP2(t *testing.T) {
	chromium := findChromium(t)
	require.Contains(t, os.Getenv("GODEBUG"), "http2xconnect=1", "the test binary could not restart itself with GODEBUG=http2xconnect=1")

	backend := httptest.NewServer(wstest.EchoHandler())
	t.Cleanup(backend.Close)

	upgrades := make(chan wsproxy.TunnelInfo, 4)
	closes := make(chan wsproxy.CloseInfo, 4)
	p, err := wsproxy.New([]string{"ws://" + backend.Listener.Addr().String()}, wsproxy.WithHooks(wsproxy.Hooks{
		OnUpgrade: func(ti wsproxy.TunnelInfo) { upgrades <- ti },
		OnClose:   func(ci wsproxy.CloseInfo) { closes <- ci },
	}))
	require.NoError(t, err)

	results := make(chan pageResult, 1)
	var pageProto atomic.Value
	mux := http.NewServeMux()
	mux.Handle("/ws", p)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		pageProto.Store(r.Proto)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
	mux.HandleFunc("POST /result", func(w http.ResponseWriter, r *http.Request) {
		var res pageResult
		if err := json.NewDecoder(r.Body).Decode(&res); err == nil {
			select {
			case results <- res:
			default:
			}
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() {
		p.Close()
		srv.Close()
	})

	logs := runChromium(t, chromium, srv.URL+"/")

	var res pageResult
	select {
	case res = <-results:
	case <-time.After(60 * time.Second):
		require.FailNow(t, "the page reported nothing", "chromium output:\n%s", logs.String())
	}
	assert.Equal(t, "HTTP/2.0", pageProto.Load(), "the page itself came over HTTP/2")
	assert.False(t, res.Error, "the page saw a WebSocket error")
	assert.Equal(t, "hello over h2", res.Text)
	assert.True(t, res.BigOK, "the 256 KiB message came back intact")
	assert.Equal(t, 4000, res.Code)
	assert.Equal(t, "done", res.Reason)
	assert.True(t, res.Clean, "the close handshake completed")

	select {
	case ti := <-upgrades:
		assert.Equal(t, "HTTP/2.0", ti.Proto, "the WebSocket went over HTTP/2 (RFC 8441)")
		assert.Equal(t, "/ws", ti.Path)
	case <-time.After(10 * time.Second):
		assert.Fail(t, "no OnUpgrade")
	}
	select {
	case ci := <-closes:
		assert.Equal(t, "HTTP/2.0", ci.Proto)
		assert.Equal(t, 4000, ci.ClientToBackend.CloseCode)
		assert.Equal(t, int64(2), ci.ClientToBackend.Messages)
		assert.Equal(t, int64(2), ci.BackendToClient.Messages)
	case <-time.After(10 * time.Second):
		assert.Fail(t, "no OnClose")
	}
}

// findChromium returns Debian's chromium. Without it the test skips, or
// fails when CI is set: CI must run it (setup.sh installs it).
func findChromium(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		require.NoError(t, err, "chromium is missing: run internal/h2browser/setup.sh")
	}
	t.Skipf("chromium not installed (run setup.sh): %v", err)
	return ""
}

// runChromium starts headless Chromium on url, in a process group of its
// own with a fresh profile; cleanup kills the group and removes the
// profile. The flags keep it off the network, which is closed here.
func runChromium(t *testing.T, chromium, url string) *syncBuffer {
	t.Helper()
	profile, err := os.MkdirTemp("", "h2browser-profile-")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--ignore-certificate-errors",
		"--user-data-dir="+profile, url)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	require.NoError(t, cmd.Start())
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		cmd.Wait()
		cancel()
		// The group's other processes die with it; wait for them before
		// removing the profile they write to.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
		}
		os.RemoveAll(profile)
	})
	return logs
}

// syncBuffer collects Chromium's output for the failure message.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

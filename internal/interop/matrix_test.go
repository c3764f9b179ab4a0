package interop

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsproxy/wsproxy"
)

// result is one check of one client/backend pair.
type result struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, fail, unsupported, pending
	Detail string `json:"detail"`
}

// pairEnv is what a client needs to run the checks of one pair.
type pairEnv struct {
	wsURL, pageURL string
	id1, id2       string // connection ids for the close reports
	wantDeflate    bool
	noDeflate      string // why deflate is not expected
	b              backendSpec
	c              clientSpec
}

// clientSpec is one row of the matrix.
type clientSpec struct {
	name      string
	deflate   bool
	fragments string // why it cannot send fragments, "" if it can
	ping      string // why it cannot send pings, "" if it can
	// fragmentsAbove: the client sends messages larger than this as
	// several frames on its own (0: never).
	fragmentsAbove int
	run            func(t *testing.T, ctx context.Context, env pairEnv) ([]result, error)
}

var clients = []clientSpec{
	// gorilla splits a message into frames only when its write buffer (1 MiB
	// here, see dialGorilla) fills; the others split at every Write.
	{name: "gorilla", deflate: true, run: goClient(dialGorilla, 5<<19)},
	{name: "coder", deflate: true, run: goClient(dialCoder, 30000)},
	{name: "gobwas", deflate: true, run: goClient(dialGobwas, 30000)},
	{name: "node-ws", deflate: true, run: runNodeClient},
	{
		name: "chromium", deflate: true, run: runChromium,
		fragments: "the browser WebSocket API sends every message as one frame",
		ping:      "the browser WebSocket API cannot send pings",
		// Observed: a 1 MiB message reaches the backend as several frames,
		// the first of 130677 bytes.
		fragmentsAbove: 65536,
	},
}

// The matrix, filled by TestMatrix and printed by TestMain.
var (
	matrixMu sync.Mutex
	matrix   = map[[2]string]string{}
	notes    []string
)

func record(client, backend, cell string, extra ...string) {
	matrixMu.Lock()
	defer matrixMu.Unlock()
	if cell != "" {
		matrix[[2]string{client, backend}] = cell
	}
	notes = append(notes, extra...)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theBrowser != nil {
		theBrowser.stop()
	}
	// go test shows this only with -v or on failure; scripts/test.sh sets
	// WSPROXY_INTEROP_REPORT and prints the file.
	printReport(os.Stdout)
	if path := os.Getenv("WSPROXY_INTEROP_REPORT"); path != "" {
		if f, err := os.Create(path); err == nil {
			printReport(f)
			f.Close()
		}
	}
	os.Exit(code)
}

// printReport writes the interop matrix and the Socket.IO table, those of
// them that tests filled.
func printReport(w io.Writer) {
	printMatrix(w)
	printSIO(w)
}

func printMatrix(w io.Writer) {
	matrixMu.Lock()
	defer matrixMu.Unlock()
	if len(matrix) == 0 {
		return
	}
	fmt.Fprintln(w, "\nInterop matrix (rows: client, columns: backend; every pair through wsproxy on loopback)")
	fmt.Fprintf(w, "%-10s", "")
	for _, b := range backends {
		fmt.Fprintf(w, " | %-15s", b.name)
	}
	fmt.Fprintln(w)
	for _, c := range clients {
		fmt.Fprintf(w, "%-10s", c.name)
		for _, b := range backends {
			cell, ok := matrix[[2]string{c.name, b.name}]
			if !ok {
				cell = "not run"
			}
			fmt.Fprintf(w, " | %-15s", cell)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "(pass N: checks passed; n/a N: checks unsupported by one side, reasons below; FAIL N: checks failed)")
	seen := map[string]bool{}
	var uniq []string
	for _, n := range notes {
		if !seen[n] {
			seen[n] = true
			uniq = append(uniq, n)
		}
	}
	sort.Strings(uniq)
	for _, n := range uniq {
		fmt.Fprintln(w, "  "+n)
	}
}

// Dependencies outside Go. Missing ones skip a pair on a developer's
// machine and fail it when CI=true, where setup.sh must have installed them.

type missingError struct{ what string }

func (e *missingError) Error() string {
	return "missing " + e.what + " (run internal/interop/setup.sh)"
}

func need(checks ...func() error) error {
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

func haveFile(path string) func() error {
	return func() error {
		if _, err := os.Stat(path); err != nil {
			return &missingError{path}
		}
		return nil
	}
}

func haveCommand(name string) func() error {
	return func() error {
		if _, err := exec.LookPath(name); err != nil {
			return &missingError{name + " on PATH"}
		}
		return nil
	}
}

func nodeDeps() []func() error {
	return []func() error{haveCommand("node"), haveFile(filepath.Join(nodeDir, "node_modules", "ws", "package.json"))}
}

func chromiumDeps() []func() error {
	return append(nodeDeps(), haveFile(chromiumPath), haveFile(filepath.Join(nodeDir, "node_modules", "playwright-core", "package.json")))
}

func pythonDeps() []func() error {
	return []func() error{haveFile(systemPython), func() error {
		if err := exec.Command(systemPython, "-c", "import websockets").Run(); err != nil {
			return &missingError{"python3-websockets for " + systemPython}
		}
		return nil
	}}
}

// skipOrFail fails the test for a missing dependency under CI and skips it
// elsewhere.
func skipOrFail(t *testing.T, err error) {
	t.Helper()
	var me *missingError
	if errors.As(err, &me) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	t.Fatal(err)
}

// newProxyServer serves wsproxy for target on /ws, and the checks page for
// the browser on /.
func newProxyServer(t *testing.T, target string) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /checks.mjs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		http.ServeFile(w, r, filepath.Join(nodeDir, "checks.mjs"))
	})
	p, err := wsproxy.New([]string{target}, wsproxy.WithFallback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, checksPage)
	})))
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/ws", p)
	mux.Handle("GET /{$}", p)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { srv.Close(); p.Close() })
	return srv.URL
}

const checksPage = `<!doctype html>
<title>wsproxy interop checks</title>
<script type="module">
import { runChecks } from '/checks.mjs';
window.runChecks = (o) => runChecks((url, protocols) => new WebSocket(url, protocols), o);
</script>
`

var sizes = []int{0, 1, 125, 126, 65535, 65536, 1 << 20}

// goClient runs the checks with a Go client library; fragSize is the size
// of the fragmented messages it sends.
func goClient(dial goDialFunc, fragSize int) func(t *testing.T, ctx context.Context, env pairEnv) ([]result, error) {
	return func(t *testing.T, ctx context.Context, env pairEnv) ([]result, error) {
		var out []result
		add := func(name string, ok bool, detail string, args ...any) {
			st := "pass"
			if !ok {
				st = "fail"
			}
			out = append(out, result{name, st, fmt.Sprintf(detail, args...)})
		}
		protos := []string{"chat.v2", "chat.v1"}
		c, err := dial(ctx, env.wsURL+"?id="+env.id1, protos)
		if err != nil {
			add("handshake", false, "%v", err)
			return out, nil
		}
		defer c.abort()
		add("handshake", true, "")
		add("subprotocol", c.subprotocol() == "chat.v1", "negotiated %q", c.subprotocol())
		ext := c.extensions()
		switch got := strings.Contains(ext, "permessage-deflate"); {
		case got != env.wantDeflate:
			add("permessage-deflate", false, "extensions %q, want deflate=%v", ext, env.wantDeflate)
		case got:
			add("permessage-deflate", true, "%s", ext)
		default:
			out = append(out, result{"permessage-deflate", "unsupported", env.noDeflate})
		}
		echo := func(binary bool, p []byte, send func() error) string {
			if err := send(); err != nil {
				return "send: " + err.Error()
			}
			gb, got, err := c.recv()
			if err != nil {
				return "recv: " + err.Error()
			}
			return diff(binary, p, gb, got)
		}
		for _, binary := range []bool{false, true} {
			for _, n := range sizes {
				p := payload(n, binary)
				d := echo(binary, p, func() error { return c.send(binary, p) })
				add(fmt.Sprintf("%s-%d", kind(binary), n), d == "", "%s", d)
			}
		}
		if env.b.noFragments != "" {
			out = append(out, result{"fragmented", "unsupported", env.b.noFragments})
		} else {
			var ds []string
			for _, binary := range []bool{false, true} {
				p := payload(fragSize, binary)
				if d := echo(binary, p, func() error { return c.sendFragmented(binary, p, []int{fragSize / 4, fragSize / 3}) }); d != "" {
					ds = append(ds, kind(binary)+": "+d)
				}
			}
			add("fragmented", len(ds) == 0, "%s", strings.Join(ds, "; "))
		}
		pong, err := c.ping([]byte("ping-42"))
		add("ping", err == nil && string(pong) == "ping-42", "pong %q, err %v", pong, err)
		if err := c.closeAndWait(4001, "client bye"); err != nil {
			add("client-close", false, "closing: %v", err)
		} else {
			out = append(out, result{"client-close", "pending", ""})
		}

		c2, err := dial(ctx, env.wsURL+"?id="+env.id2, protos)
		if err != nil {
			add("server-close", false, "dial: %v", err)
			return out, nil
		}
		defer c2.abort()
		if err := c2.send(false, []byte("close:4002:server bye")); err != nil {
			add("server-close", false, "send: %v", err)
			return out, nil
		}
		_, _, err = c2.recv()
		var ce *closeErr
		if errors.As(err, &ce) {
			add("server-close", ce.code == 4002 && ce.reason == env.b.closeReason, "got %d %q, want 4002 %q", ce.code, ce.reason, env.b.closeReason)
		} else {
			add("server-close", false, "got %v, want a close frame", err)
		}
		return out, nil
	}
}

func kind(binary bool) string {
	if binary {
		return "binary"
	}
	return "text"
}

// jsOpts are the options checks.mjs takes.
func jsOpts(env pairEnv) map[string]any {
	c := env.c
	return map[string]any{
		"url": env.wsURL, "id1": env.id1, "id2": env.id2,
		"wantDeflate": env.wantDeflate, "noDeflate": env.noDeflate,
		"closeReason": env.b.closeReason, "noFragments": env.b.noFragments,
		"noClientFragments": c.fragments, "noClientPing": c.ping,
		"fragmentsAbove": c.fragmentsAbove,
	}
}

func runNodeClient(t *testing.T, ctx context.Context, env pairEnv) ([]result, error) {
	if err := need(nodeDeps()...); err != nil {
		return nil, err
	}
	var rs []result
	return rs, runNodeScript(ctx, "client.mjs", jsOpts(env), &rs)
}

// runNodeScript runs node/script with opts as its JSON argument and decodes
// the JSON it prints into out.
func runNodeScript(ctx context.Context, script string, opts, out any) error {
	arg, err := json.Marshal(opts)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "node", filepath.Join(nodeDir, script), string(arg))
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %w (output %q)", script, err, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s output %q: %w", script, b, err)
	}
	return nil
}

// browser is a running browser.mjs: one Chromium for the whole test binary.
type browser struct {
	mu    sync.Mutex
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

var (
	browserOnce sync.Once
	theBrowser  *browser
	browserErr  error
)

// getBrowser starts Chromium on first use; TestMain stops it.
func getBrowser(t *testing.T) (*browser, error) {
	browserOnce.Do(func() {
		if browserErr = need(chromiumDeps()...); browserErr != nil {
			return
		}
		theBrowser, browserErr = startBrowser()
	})
	return theBrowser, browserErr
}

func startBrowser() (*browser, error) {
	cmd := exec.Command("node", filepath.Join(nodeDir, "browser.mjs"))
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromiumPath)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &browser{cmd: cmd, in: in, lines: make(chan string, 4)}
	go func() {
		s := bufio.NewScanner(outPipe)
		s.Buffer(nil, 16<<20)
		for s.Scan() {
			b.lines <- s.Text()
		}
		close(b.lines)
	}()
	var ready struct {
		Ready bool   `json:"ready"`
		Error string `json:"error"`
	}
	if err := b.read(60*time.Second, &ready); err != nil || !ready.Ready {
		b.stop()
		return nil, fmt.Errorf("chromium did not start: %v %s", err, ready.Error)
	}
	return b, nil
}

func (b *browser) read(timeout time.Duration, v any) error {
	select {
	case l, ok := <-b.lines:
		if !ok {
			return errors.New("browser.mjs exited")
		}
		return json.Unmarshal([]byte(l), v)
	case <-time.After(timeout):
		return fmt.Errorf("no answer from browser.mjs within %v", timeout)
	}
}

// do sends one command and decodes the answer into v.
func (b *browser) do(cmd map[string]any, timeout time.Duration, v any) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	line, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if _, err := b.in.Write(append(line, '\n')); err != nil {
		return err
	}
	return b.read(timeout, v)
}

func (b *browser) stop() {
	b.in.Close()
	done := make(chan struct{})
	go func() { b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-done
	}
}

func runChromium(t *testing.T, ctx context.Context, env pairEnv) ([]result, error) {
	b, err := getBrowser(t)
	if err != nil {
		return nil, err
	}
	var ans struct {
		Results []result `json:"results"`
		Error   string   `json:"error"`
	}
	if err := b.do(map[string]any{"op": "checks", "page": env.pageURL, "opts": jsOpts(env)}, 60*time.Second, &ans); err != nil {
		return nil, err
	}
	if ans.Error != "" {
		return nil, errors.New(ans.Error)
	}
	return ans.Results, nil
}

// allChecks is every check name, so a client that stops early shows what it
// did not do.
func allChecks() []string {
	names := []string{"handshake", "subprotocol", "permessage-deflate"}
	for _, k := range []string{"text", "binary"} {
		for _, n := range sizes {
			names = append(names, fmt.Sprintf("%s-%d", k, n))
		}
	}
	return append(names, "fragmented", "ping", "client-close", "server-close")
}

func TestMatrix(t *testing.T) {
	running := map[string]*backend{}
	startErr := map[string]error{}
	for _, bs := range backends {
		running[bs.name], startErr[bs.name] = bs.start(t)
	}
	for _, cs := range clients {
		for _, bs := range backends {
			t.Run(cs.name+"/"+strings.ReplaceAll(bs.name, "/", "-"), func(t *testing.T) {
				runPair(t, cs, bs, running[bs.name], startErr[bs.name])
			})
		}
	}
}

func runPair(t *testing.T, cs clientSpec, bs backendSpec, b *backend, startErr error) {
	fail := func(err error) {
		var me *missingError
		if errors.As(err, &me) && os.Getenv("CI") != "true" {
			record(cs.name, bs.name, "skipped", fmt.Sprintf("%s -> %s: skipped: %v", cs.name, bs.name, err))
		} else {
			record(cs.name, bs.name, "FAIL", fmt.Sprintf("%s -> %s: %v", cs.name, bs.name, err))
		}
		skipOrFail(t, err)
	}
	if startErr != nil {
		fail(fmt.Errorf("backend: %w", startErr))
		return
	}
	// Generous: under -race, deflate of megabyte messages on a shared 2-core
	// machine takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := newProxyServer(t, b.url)
	env := pairEnv{
		wsURL:       "ws" + strings.TrimPrefix(base, "http") + "/ws",
		pageURL:     base + "/",
		id1:         fmt.Sprintf("%s-%s-1", cs.name, bs.name),
		id2:         fmt.Sprintf("%s-%s-2", cs.name, bs.name),
		wantDeflate: cs.deflate && bs.deflate,
		b:           bs,
		c:           cs,
	}
	if !bs.deflate {
		env.noDeflate = bs.name + " backend has no permessage-deflate"
	}
	rs, err := cs.run(t, ctx, env)
	if err != nil {
		fail(err)
		return
	}
	for i, r := range rs {
		if r.Name == "client-close" && r.Status == "pending" {
			rs[i] = checkClientClose(ctx, b, env.id1, r.Detail)
		}
	}
	got := map[string]result{}
	for _, r := range rs {
		got[r.Name] = r
	}
	var pass, na, failed int
	for _, name := range allChecks() {
		r, ok := got[name]
		if !ok {
			r = result{name, "fail", "not run (an earlier step failed)"}
		}
		switch r.Status {
		case "pass":
			pass++
		case "unsupported":
			na++
			record(cs.name, bs.name, "", fmt.Sprintf("n/a %s -> %s %s: %s", cs.name, bs.name, name, r.Detail))
			t.Logf("%s: unsupported: %s", name, r.Detail)
		default:
			failed++
			record(cs.name, bs.name, "", fmt.Sprintf("FAIL %s -> %s %s: %s", cs.name, bs.name, name, r.Detail))
			t.Errorf("%s: %s", name, r.Detail)
		}
	}
	cell := fmt.Sprintf("pass %d", pass)
	if na > 0 {
		cell += fmt.Sprintf(" n/a %d", na)
	}
	if failed > 0 {
		cell = fmt.Sprintf("FAIL %d/%d", failed, pass+na+failed)
	}
	record(cs.name, bs.name, cell)
}

// checkClientClose asks the backend which close frame it received after the
// client closed with 4001 "client bye".
func checkClientClose(ctx context.Context, b *backend, id, clientSaw string) result {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ci, ok, err := b.report(ctx, id)
		switch {
		case err != nil:
			return result{"client-close", "fail", "asking the backend: " + err.Error()}
		case ok:
			st := "pass"
			if ci.code != 4001 || ci.reason != "client bye" {
				st = "fail"
			}
			return result{"client-close", st, fmt.Sprintf("backend got %d %q, want 4001 \"client bye\" %s", ci.code, ci.reason, clientSaw)}
		case time.Now().After(deadline):
			return result{"client-close", "fail", "the backend saw no close frame within 5s " + clientSaw}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

//go:build linux

package readmecheck

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

const root = "../.."

// Bounds: a command may need to compile first, on a loaded machine.
const (
	startTimeout = 3 * time.Minute // until a server announces itself or a command exits
	stopTimeout  = 30 * time.Second
	ioTimeout    = 15 * time.Second
)

// block is one marked ```sh block of a README.
type block struct {
	file  string // relative to the repository root
	line  int    // of the ``` line
	marks map[string][]string
	cmds  []string
}

func (b block) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

func (b block) mark(key string) string {
	if v := b.marks[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

var (
	markerRE = regexp.MustCompile(`^<!-- ci:(.*)-->$`)
	fieldRE  = regexp.MustCompile(`([a-z]+)=("(?:[^"\\]|\\.)*"|\S+)`)
	knownKey = map[string]bool{"ws": true, "header": true, "first": true, "refuse": true, "get": true,
		"hsts": true, "close": true, "only": true, "skip": true}
)

// readmes returns README.md and the READMEs under examples/, and fails
// when an example has none.
func readmes(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md"}
	dirs, err := os.ReadDir(filepath.Join(root, "examples"))
	require.NoError(t, err)
	for _, d := range dirs {
		if !d.IsDir() || d.Name() == "internal" {
			continue
		}
		_, err := os.Stat(filepath.Join(root, "examples", d.Name(), "README.md"))
		require.NoError(t, err, "every example has a README with its commands")
	}
	err = filepath.WalkDir(filepath.Join(root, "examples"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "README.md" {
			return err
		}
		rel, err := filepath.Rel(root, path)
		files = append(files, rel)
		return err
	})
	require.NoError(t, err)
	return files
}

// parseBlocks returns the ```sh blocks of a README with their marks, and
// fails on a block without a mark or a mark with an unknown key.
func parseBlocks(t *testing.T, file string) []block {
	t.Helper()
	md, err := os.ReadFile(filepath.Join(root, file))
	require.NoError(t, err)
	lines := strings.Split(string(md), "\n")
	var blocks []block
	for i := 0; i < len(lines); i++ {
		if lines[i] != "```sh" {
			continue
		}
		b := block{file: file, line: i + 1, marks: map[string][]string{}}
		var m []string
		if i > 0 {
			m = markerRE.FindStringSubmatch(lines[i-1])
		}
		require.NotNil(t, m, "%s: a ```sh block needs a <!-- ci: ... --> line before it (see internal/readmecheck)", b)
		for _, f := range fieldRE.FindAllStringSubmatch(m[1], -1) {
			require.True(t, knownKey[f[1]], "%s: unknown key %q", b, f[1])
			v := f[2]
			if strings.HasPrefix(v, `"`) {
				v, err = strconv.Unquote(v)
				require.NoError(t, err, "%s: %s", b, f[0])
			}
			b.marks[f[1]] = append(b.marks[f[1]], v)
		}
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			if cmd := strings.TrimSpace(lines[i]); cmd != "" && !strings.HasPrefix(cmd, "#") {
				b.cmds = append(b.cmds, cmd)
			}
		}
		blocks = append(blocks, b)
	}
	return blocks
}

func TestReadmeCommands(t *testing.T) {
	for _, file := range readmes(t) {
		blocks := parseBlocks(t, file)
		require.NotEmpty(t, blocks, "%s has no commands", file)
		for _, b := range blocks {
			t.Run(b.String(), func(t *testing.T) {
				if why := b.mark("skip"); why != "" {
					t.Skip(why)
				}
				runBlock(t, b)
			})
		}
	}
}

var backgroundRE = regexp.MustCompile(`^(.*?)\s*&\s*(#.*)?$`)

var announceRE = regexp.MustCompile(`listening on ((?:https?|wss?)://(?:\[[0-9a-f:]+\]|[\w.-]+)(?::\d+)?)`)

// proc is one running command of a block.
type proc struct {
	line   string
	cmd    *exec.Cmd
	out    *lineWriter // stdout and stderr, for failure messages
	stdout bytes.Buffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

// lineWriter keeps what a command printed and reports the first
// "listening on" URL.
type lineWriter struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	announced chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if m := announceRE.FindStringSubmatch(w.buf.String()); m != nil {
		select {
		case w.announced <- m[1]:
		default:
		}
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func start(t *testing.T, dir, line string) *proc {
	t.Helper()
	p := &proc{line: line, exited: make(chan struct{})}
	p.out = &lineWriter{announced: make(chan string, 1)}
	// A trailing & (before a comment) runs a server in the background
	// of the reader's shell; here every command runs in the background.
	if m := backgroundRE.FindStringSubmatch(line); m != nil {
		line = m[1] + " " + m[2]
	}
	p.cmd = exec.Command("bash", "-c", line)
	p.cmd.Dir = dir
	p.cmd.Stdout = &stdoutWriter{p: p}
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, p.cmd.Start(), line)
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of %q:\n%s", line, p.out)
		}
	})
	return p
}

// kill ends the command and whatever it started, unless it has exited.
func (p *proc) kill() {
	select {
	case <-p.exited:
	default:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// stdoutWriter keeps stdout apart (for {N}) and passes it to the line
// writer too.
type stdoutWriter struct{ p *proc }

func (w *stdoutWriter) Write(b []byte) (int, error) {
	w.p.out.mu.Lock()
	w.p.stdout.Write(b)
	w.p.out.mu.Unlock()
	return w.p.out.Write(b)
}

func (p *proc) stdoutText() string {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	return strings.TrimSpace(p.stdout.String())
}

// program returns the process a command runs in the end: the leaf of its
// process tree (the binary under `go run`, not the go command).
func (p *proc) program() int {
	pid := p.cmd.Process.Pid
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		var kids []int
		for _, task := range tasks {
			b, _ := os.ReadFile(task)
			for _, f := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(f); err == nil {
					kids = append(kids, n)
				}
			}
		}
		if len(kids) == 0 {
			return pid
		}
		pid = kids[len(kids)-1]
	}
}

// stop sends SIGTERM to the program and requires a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, syscall.Kill(p.program(), syscall.SIGTERM))
	select {
	case <-p.exited:
		assert.NoError(t, p.err, "%q exits cleanly on SIGTERM", p.line)
	case <-time.After(stopTimeout):
		assert.Fail(t, "no exit after SIGTERM", p.line)
	}
}

// server is a running server of a block and the URL it announced.
type server struct {
	*proc
	base *url.URL
}

// runBlock runs b. A default port that another process holds (another
// checkout's tests, a demo left running) makes it wait for the port and
// try again, a few times.
func runBlock(t *testing.T, b block) {
	for attempt := 1; ; attempt++ {
		busy := runBlockOnce(t, b)
		if busy == "" {
			return
		}
		require.Less(t, attempt, 4, "%s: port %s stays taken by another process", b, busy)
		t.Logf("port %s is taken by another process; waiting until it is free", busy)
		waitFree(t, busy)
	}
}

// runBlockOnce runs b and returns "", or the port another process holds.
func runBlockOnce(t *testing.T, b block) (busy string) {
	dir := root
	cmds := b.cmds
	if only := b.mark("only"); only != "" {
		n, err := strconv.Atoi(only)
		require.NoError(t, err)
		cmds = cmds[:n]
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.kill()
			}
		}
	}()
	var servers []server
	for _, line := range cmds {
		if to, ok := strings.CutPrefix(line, "cd "); ok {
			dir = filepath.Join(dir, strings.TrimSpace(to))
			procs = append(procs, nil)
			continue
		}
		p := start(t, dir, substitute(t, line, procs))
		procs = append(procs, p)
		select {
		case <-p.exited:
			if port := p.portTaken(); port != "" {
				return port
			}
			require.NoError(t, p.err, "%q exits 0", line)
		case u := <-p.out.announced:
			base, err := url.Parse(u)
			require.NoError(t, err)
			if port := waitAnswers(t, p, base.Host); port != "" {
				return port
			}
			servers = append(servers, server{p, base})
		case <-time.After(startTimeout):
			require.FailNow(t, "neither exited nor announced \"listening on\"", line)
		}
	}
	if len(servers) == 0 {
		for _, key := range []string{"ws", "get", "hsts", "refuse", "close"} {
			require.Empty(t, b.marks[key], "%s: %s= needs a server in the block", b, key)
		}
		return ""
	}
	main := servers[len(servers)-1]
	open := check(t, b, main.base, procs)
	for i := len(servers) - 1; i >= 0; i-- {
		servers[i].stop(t)
		if i == len(servers)-1 && open != nil {
			wantClose(t, b, open)
		}
	}
	return ""
}

// substitute replaces {N} with the stdout of the block's line N.
func substitute(t *testing.T, s string, procs []*proc) string {
	t.Helper()
	return regexp.MustCompile(`\{(\d+)\}`).ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.Atoi(m[1 : len(m)-1])
		require.True(t, n >= 1 && n <= len(procs) && procs[n-1] != nil, "{%d}: no such command before", n)
		return procs[n-1].stdoutText()
	})
}

// waitAnswers waits until the program listens on addr: a program may
// announce its address just before it listens. It returns the port when
// the program exits because another process holds it.
func waitAnswers(t *testing.T, p *proc, addr string) (busy string) {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	deadline := time.Now().Add(ioTimeout)
	for !listens(p.program(), port) {
		select {
		case <-p.exited:
			if busy := p.portTaken(); busy != "" {
				return busy
			}
			require.FailNow(t, "exited before answering", "%q: %v", p.line, p.err)
		case <-time.After(20 * time.Millisecond):
		}
		require.True(t, time.Now().Before(deadline), "%q announced %s but does not listen there", p.line, addr)
	}
	return ""
}

var takenRE = regexp.MustCompile(`listen tcp \S*:(\d+): bind: address already in use`)

// portTaken returns the port an exited command could not listen on.
func (p *proc) portTaken() string {
	if m := takenRE.FindStringSubmatch(p.out.String()); m != nil {
		return m[1]
	}
	return ""
}

// listeners returns the inodes of the TCP sockets listening on port.
func listeners(port string) map[string]bool {
	n, _ := strconv.Atoi(port)
	suffix := fmt.Sprintf(":%04X", n)
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n") {
			// sl local_address rem_address st ... inode: state 0A is LISTEN.
			fields := strings.Fields(line)
			if len(fields) > 9 && strings.HasSuffix(fields[1], suffix) && fields[3] == "0A" {
				inodes[fields[9]] = true
			}
		}
	}
	return inodes
}

// listens reports whether process pid holds a socket listening on port.
func listens(pid int, port string) bool {
	inodes := listeners(port)
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fd)
		if inode, ok := strings.CutPrefix(link, "socket:["); ok && err == nil && inodes[strings.TrimSuffix(inode, "]")] {
			return true
		}
	}
	return false
}

// waitFree waits until nothing listens on port.
func waitFree(t *testing.T, port string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for len(listeners(port)) > 0 {
		require.True(t, time.Now().Before(deadline), "port %s stays taken by another process", port)
		time.Sleep(100 * time.Millisecond)
	}
}

// loopbackTLS accepts the self-signed certificates the examples make for
// themselves; the connections go to loopback only.
var loopbackTLS = &tls.Config{InsecureSkipVerify: true}

var client = &http.Client{
	Transport:     &http.Transport{TLSClientConfig: loopbackTLS},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       ioTimeout,
}

// check runs the block's checks against the server at base and returns the
// WebSocket left open for the close check, if any.
func check(t *testing.T, b block, base *url.URL, procs []*proc) *wstest.Conn {
	t.Helper()
	for _, g := range b.marks["get"] {
		code, target, ok := strings.Cut(g, ":")
		require.True(t, ok, "%s: get=CODE:TARGET", b)
		if strings.HasPrefix(target, "/") {
			target = base.String() + target
		}
		resp, err := client.Get(target)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, code, strconv.Itoa(resp.StatusCode), "GET %s", target)
	}
	if path := b.mark("hsts"); path != "" {
		resp, err := client.Get(base.String() + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.NotEmpty(t, resp.Header.Get("Strict-Transport-Security"), "GET %s", path)
	}
	wsBase := "ws://" + base.Host
	if base.Scheme == "https" || base.Scheme == "wss" {
		wsBase = "wss://" + base.Host
	}
	if r := b.mark("refuse"); r != "" {
		code, path, ok := strings.Cut(r, ":")
		require.True(t, ok, "%s: refuse=CODE:PATH", b)
		_, resp, err := dial(wsBase + path)
		require.Error(t, err)
		require.NotNil(t, resp, "%s: an HTTP answer: %v", b, err)
		assert.Equal(t, code, strconv.Itoa(resp.StatusCode), "handshake without the headers")
	}
	path := b.mark("ws")
	if path == "" {
		require.Empty(t, b.marks["close"], "%s: close= needs ws=", b)
		return nil
	}
	var headers []string
	for _, h := range b.marks["header"] {
		headers = append(headers, substitute(t, h, procs))
	}
	c, _, err := dial(wsBase+path, headers...)
	require.NoError(t, err, "WebSocket to %s%s", wsBase, path)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(ioTimeout))
	if first := b.mark("first"); first != "" {
		_, msg, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, first, string(msg))
	}
	for _, m := range []struct {
		op      byte
		payload []byte
	}{
		{wsframe.OpText, []byte("hello from readmecheck")},
		{wsframe.OpBinary, []byte{0, 1, 2, 0xfe, 0xff}},
	} {
		require.NoError(t, c.WriteMessage(m.op, m.payload))
		op, got, err := c.ReadMessage()
		require.NoError(t, err)
		assert.Equal(t, m.op, op)
		assert.Equal(t, m.payload, got, "echoed through %s%s", wsBase, path)
	}
	if b.mark("close") == "" {
		return nil
	}
	return c
}

func dial(u string, headers ...string) (*wstest.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	return wstest.Dial(ctx, u, loopbackTLS, nil, headers...)
}

// wantClose reads what is left on c: a close frame with the block's code.
func wantClose(t *testing.T, b block, c *wstest.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *wstest.CloseError
		require.True(t, errors.As(err, &ce), "a close frame, not %v", err)
		assert.Equal(t, b.mark("close"), strconv.Itoa(ce.Code))
		return
	}
}

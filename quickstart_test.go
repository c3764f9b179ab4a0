package wsproxy

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The Quick start is examples/quickstart/main.go, which internal/readmecheck
// runs as the README says. These tests hold the README and the package doc
// to that file, and check what a run over HTTP/1.1 cannot show: its route
// and its shutdown order over HTTP/2.

const quickStartFile = "examples/quickstart/main.go"

// quickStart parses the Quick start and returns its func main.
func quickStart(t *testing.T) *ast.FuncDecl {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), quickStartFile, nil, 0)
	require.NoError(t, err)
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "main" {
			return fd
		}
	}
	require.FailNow(t, "no func main in "+quickStartFile)
	return nil
}

// calls returns the calls in fn to method sel (like "Handle") on the
// variable recv, in source order.
func calls(fn *ast.FuncDecl, recv, sel string) []*ast.CallExpr {
	var found []*ast.CallExpr
	ast.Inspect(fn, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		if se, ok := call.Fun.(*ast.SelectorExpr); ok && se.Sel.Name == sel {
			if id, ok := se.X.(*ast.Ident); ok && id.Name == recv {
				found = append(found, call)
			}
		}
		return true
	})
	return found
}

// quickStartPatterns returns the ServeMux patterns the Quick start mounts
// the proxy on.
func quickStartPatterns(t *testing.T) []string {
	t.Helper()
	var patterns []string
	for _, call := range calls(quickStart(t), "mux", "Handle") {
		require.Len(t, call.Args, 2)
		lit, ok := call.Args[0].(*ast.BasicLit)
		require.True(t, ok, "the Quick start's pattern is a string literal")
		pattern, err := strconv.Unquote(lit.Value)
		require.NoError(t, err)
		if id, ok := call.Args[1].(*ast.Ident); ok && id.Name == "p" {
			patterns = append(patterns, pattern)
		}
	}
	require.NotEmpty(t, patterns, "the Quick start mounts the proxy with mux.Handle(pattern, p)")
	return patterns
}

// fencedBlock returns the first ```lang block of the Markdown file after
// the line heading.
func fencedBlock(t *testing.T, file, heading, lang string) string {
	t.Helper()
	md, err := os.ReadFile(file)
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(md), "\n"+heading+"\n")
	require.True(t, ok, "%s has no %q", file, heading)
	_, rest, ok = strings.Cut(rest, "```"+lang+"\n")
	require.True(t, ok, "no ```%s block under %q", lang, heading)
	block, _, ok := strings.Cut(rest, "```\n")
	require.True(t, ok, "unterminated block under %q", heading)
	return block
}

func TestQuickStartIsTheProgram(t *testing.T) {
	t.Parallel()
	program, err := os.ReadFile(quickStartFile)
	require.NoError(t, err)
	assert.Equal(t, string(program), fencedBlock(t, "README.md", "## Quick start", "go"),
		"the README's Quick start must be %s, byte for byte", quickStartFile)

	// The package doc shows the body of main, indented by one tab.
	src, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	var doc []string
	for _, line := range strings.Split(string(src), "\n") {
		if line == "package wsproxy" {
			break
		}
		if code, ok := strings.CutPrefix(line, "//\t"); ok {
			doc = append(doc, code)
		} else if len(doc) > 0 && line == "//" {
			doc = append(doc, "")
		} else if len(doc) > 0 {
			break
		}
	}
	_, body, ok := strings.Cut(string(program), "\nfunc main() {\n")
	require.True(t, ok)
	body, _, ok = strings.Cut(body, "\n}\n")
	require.True(t, ok)
	body = strings.ReplaceAll("\n"+body, "\n\t", "\n")[1:]
	assert.Equal(t, body, strings.TrimRight(strings.Join(doc, "\n"), "\n"),
		"the package doc's snippet must be the Quick start's func main")
}

// TestQuickStartRouteHTTP2 mounts the proxy as the Quick start does and
// opens a WebSocket through it both ways a browser does: an RFC 8441
// extended CONNECT over HTTP/2 and a GET upgrade over HTTP/1.1. A pattern
// with a method, "GET /ws", answers the CONNECT with 405 before the proxy
// sees it (the control case).
func TestQuickStartRouteHTTP2(t *testing.T) {
	t.Parallel()
	mount := func(patterns []string) func(*http.Server) {
		return func(s *http.Server) {
			mux := http.NewServeMux()
			for _, pattern := range patterns {
				mux.Handle(pattern, s.Handler)
			}
			s.Handler = mux
		}
	}
	f := newH2FixtureWith(t, mount(quickStartPatterns(t)), []string{newEcho(t)})

	c, resp := f.mustDial(t, "/ws", nil)
	assert.Equal(t, 2, resp.ProtoMajor)
	echoMessage(t, c, wsframe.OpText, []byte("over HTTP/2"))
	assert.Equal(t, "HTTP/2.0", f.nextUpgrade(t).Proto)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c1, _, err := wstest.Dial(ctx, "wss"+strings.TrimPrefix(f.url, "https")+"/ws", f.tr.TLSClientConfig, nil)
	require.NoError(t, err)
	defer c1.Close()
	echoMessage(t, c1, wsframe.OpText, []byte("over HTTP/1.1"))
	assert.Equal(t, "HTTP/1.1", f.nextUpgrade(t).Proto)

	control := newH2FixtureWith(t, mount([]string{"GET /ws"}), []string{newEcho(t)})
	_, resp, err = control.dialH2(t, "/ws", nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	assert.Zero(t, control.p.Stats().Rejected, "the proxy never saw the request")
}

// TestQuickStartShutdownOrder runs the Quick start's order of the two
// Shutdown calls with an HTTP/2 tunnel open: the client gets 1001 and both
// calls return nil. The other order is the control: http.Server.Shutdown
// waits for the tunnel's handler (an HTTP/2 tunnel lives in it) until ctx
// ends, and Proxy.Shutdown, given that ended ctx, closes the tunnel at once
// (its close frame racing the teardown), so both calls return
// context.DeadlineExceeded.
func TestQuickStartShutdownOrder(t *testing.T) {
	t.Parallel()
	main := quickStart(t)
	proxyFirst := calls(main, "p", "Shutdown")
	serverNext := calls(main, "srv", "Shutdown")
	require.Len(t, proxyFirst, 1)
	require.Len(t, serverNext, 1)
	require.Less(t, proxyFirst[0].Pos(), serverNext[0].Pos(), "the Quick start calls p.Shutdown first")

	open := func(t *testing.T) (*h2Fixture, *wstest.Conn) {
		f := newH2Fixture(t, []string{newEcho(t)})
		c, _ := f.mustDial(t, "/", nil)
		echoMessage(t, c, wsframe.OpText, []byte("hi"))
		return f, c
	}
	t.Run("proxy first", func(t *testing.T) {
		t.Parallel()
		f, c := open(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- f.p.Shutdown(ctx) }()
		_, _, err := c.ReadMessage() // answers the close frame
		var ce *wstest.CloseError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, 1001, ce.Code)
		assert.NoError(t, <-done)
		assert.NoError(t, f.srv.Config.Shutdown(ctx))
	})
	t.Run("server first", func(t *testing.T) {
		t.Parallel()
		f, c := open(t)
		// Nothing can end the tunnel before the deadline, which is only how
		// long the control waits.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		assert.ErrorIs(t, f.srv.Config.Shutdown(ctx), context.DeadlineExceeded)
		assert.ErrorIs(t, f.p.Shutdown(ctx), context.DeadlineExceeded)
		// With its context already ended, Proxy.Shutdown closes the
		// tunnel at once: its close frame races the teardown and is
		// usually lost, so the client cannot count on a 1001.
		c.ReadMessage()
	})
}

// Package leakcheck finds goroutines that a test left running.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Leaked returns the stacks of goroutines still running that are not part of
// the runtime or the testing package, waiting up to wait for them to end.
func Leaked(wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		gs := interesting()
		if len(gs) == 0 || time.Now().After(deadline) {
			return gs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func interesting() []string {
	buf := make([]byte, 2<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		stack := strings.SplitN(g, "\n", 2)
		if len(stack) < 2 {
			continue
		}
		body := stack[1]
		if strings.Contains(body, "leakcheck.interesting") || isIgnored(body) {
			continue
		}
		out = append(out, g)
	}
	sort.Strings(out)
	return out
}

func isIgnored(stack string) bool {
	for _, s := range []string{
		"testing.(*M).", "testing.tRunner(", "testing.runTests(", "testing.(*T).Run(",
		"testing.(*T).Parallel(", "testing.runFuzzing(", "testing.(*F).Fuzz(", "testing.(*F).Run(",
		"created by runtime.gc", "os/signal.signal_recv", "runtime.ensureSigM",
		"runtime/trace", "testing.(*M).startAlarm", "time.goFunc",
	} {
		if strings.Contains(stack, s) && !strings.Contains(stack, "wsproxy") {
			return true
		}
	}
	// The test binary's main goroutine.
	return strings.HasPrefix(strings.TrimSpace(stack), "main.main()") || strings.Contains(stack, "\nmain.main()")
}

// Main runs the tests and fails the binary if goroutines leaked. Use it as
// the body of TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 && !testing.Short() {
		if gs := Leaked(5 * time.Second); len(gs) > 0 {
			fmt.Fprintf(os.Stderr, "leakcheck: %d goroutines left running after the tests:\n\n%s\n", len(gs), strings.Join(gs, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

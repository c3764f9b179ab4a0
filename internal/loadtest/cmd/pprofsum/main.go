// Command pprofsum sorts the samples of a CPU profile into where the time
// goes for a proxy: the kernel by system call (read, write, splice, ...),
// the netpoller, the scheduler (futex wake-ups and sleeps, spinning, the
// rest of findRunnable), GC, goroutine stacks, allocation, wsproxy's own code and the
// standard library. It reads the text of `go tool pprof -traces`, so it
// needs no profile parser:
//
//	go tool pprof -traces BIN cpu.pprof | pprofsum
//
// Each sample goes to the first class that matches its stack, in the order
// of the classes below, so a futex call made while waking a reader counts
// as scheduler, and a write made by wsproxy's code counts as kernel.
package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strings"
	"time"
)

// sample is one stack of the profile, leaf first, and its CPU time.
type sample struct {
	value  time.Duration
	frames []string
}

func main() {
	samples, err := parse(os.Stdin)
	if err != nil {
		log.Fatal(err)
	}
	byClass := map[string]time.Duration{}
	var total time.Duration
	for _, s := range samples {
		byClass[classify(s.frames)] += s.value
		total += s.value
	}
	if total == 0 {
		log.Fatal("pprofsum: no samples")
	}
	type row struct {
		class string
		value time.Duration
	}
	var rows []row
	for c, v := range byClass {
		rows = append(rows, row{c, v})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Or(cmp.Compare(b.value, a.value), strings.Compare(a.class, b.class)) })
	fmt.Printf("%-62s %9s %6s\n", "where (first match)", "CPU", "share")
	for _, r := range rows {
		fmt.Printf("%-62s %9s %5.1f%%\n", r.class, r.value.Round(time.Millisecond), 100*float64(r.value)/float64(total))
	}
	fmt.Printf("%-62s %9s\n", "total samples", total.Round(time.Millisecond))
}

// parse reads the blocks of `go tool pprof -traces`: a separator line,
// then the value and the leaf frame, then one caller per line.
func parse(r io.Reader) ([]sample, error) {
	var out []sample
	var cur *sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "-----------+"):
			out = append(out, sample{})
			cur = &out[len(out)-1]
		case cur == nil || strings.TrimSpace(line) == "":
			// the header, before the first sample
		case len(cur.frames) == 0:
			f := strings.Fields(line)
			if len(f) < 2 {
				return nil, fmt.Errorf("pprofsum: want a value and a frame: %q", line)
			}
			d, err := duration(f[0])
			if err != nil {
				return nil, err
			}
			cur.value, cur.frames = d, []string{f[1]}
		default:
			cur.frames = append(cur.frames, strings.Fields(line)[0])
		}
	}
	// the last separator closes the last sample and opens none
	out = slices.DeleteFunc(out, func(s sample) bool { return len(s.frames) == 0 })
	return out, sc.Err()
}

// duration parses pprof's values: 10ms, 1.17s, 1.05mins, 1.5hrs.
func duration(s string) (time.Duration, error) {
	s = strings.NewReplacer("mins", "m", "hrs", "h").Replace(s)
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("pprofsum: value %q: %w", s, err)
	}
	return d, nil
}

func classify(frames []string) string {
	leaf := frames[0]
	has := func(names ...string) bool {
		for _, f := range frames {
			if slices.Contains(names, f) {
				return true
			}
		}
		return false
	}
	switch {
	case leaf == "runtime.futex":
		return "scheduler: futex (wake a thread, sleep)"
	case slices.Contains([]string{"runtime.usleep", "runtime.osyield", "runtime.nanosleep", "runtime.procyield"}, leaf):
		return "scheduler: spinning (usleep, osyield, procyield)"
	case has("runtime.netpoll"):
		return "netpoller: epoll_wait"
	case isSyscall(leaf):
		return "kernel: " + syscallName(frames)
	case has("runtime.gcBgMarkWorker", "runtime.gcDrain", "runtime.bgsweep", "runtime.bgscavenge", "runtime.gcAssistAlloc"):
		return "GC"
	case has("runtime.newstack", "runtime.newproc", "runtime.goexit0"):
		return "goroutines: stack growth, creation, exit"
	case has("runtime.mallocgc"):
		return "allocation (mallocgc)"
	case has("runtime.schedule", "runtime.findRunnable", "runtime.park_m", "runtime.gopark", "runtime.goready", "runtime.ready", "runtime.wakep",
		"runtime.exitsyscall", "runtime.entersyscall", "runtime.reentersyscall"):
		return "scheduler: other (findRunnable, park, ready, syscall entry/exit)"
	case strings.HasPrefix(leaf, "github.com/wsproxy/wsproxy."):
		return "wsproxy code (flat)"
	case strings.HasPrefix(leaf, "crypto/"), strings.HasPrefix(leaf, "vendor/golang.org/x/crypto"):
		return "crypto (TLS)"
	case strings.HasPrefix(leaf, "net/http."), strings.HasPrefix(leaf, "net/textproto."), strings.HasPrefix(leaf, "bufio."),
		strings.HasPrefix(leaf, "golang.org/x/net/http"):
		return "net/http, textproto, bufio, x/net/http"
	case strings.HasPrefix(leaf, "net."), strings.HasPrefix(leaf, "internal/poll."), strings.HasPrefix(leaf, "syscall."):
		return "net, internal/poll (Go side of I/O)"
	case strings.HasPrefix(leaf, "runtime."), strings.HasPrefix(leaf, "internal/runtime/"), !strings.Contains(leaf, "."):
		return "runtime: other (memmove, hashing, ...; assembly)"
	}
	first, _, slash := strings.Cut(leaf, "/") // the first element of the import path
	if !slash {
		first, _, _ = strings.Cut(leaf, ".")
	}
	if !strings.Contains(first, ".") {
		return "Go standard library: other (sync, time, strings, maps, ...)"
	}
	return "other code"
}

func isSyscall(f string) bool {
	return f == "internal/runtime/syscall/linux.Syscall6" || f == "syscall.RawSyscall6" || f == "syscall.Syscall6" ||
		f == "syscall.RawSyscall" || f == "syscall.Syscall" || f == "runtime/internal/syscall.Syscall6"
}

// syscallName is the first caller above the raw system call wrappers, the
// name of the call itself: syscall.read, syscall.write, syscall.Splice, ...
func syscallName(frames []string) string {
	for _, f := range frames {
		if !isSyscall(f) {
			f = strings.TrimPrefix(f, "internal/runtime/syscall/linux.")
			return strings.TrimPrefix(f, "syscall.")
		}
	}
	return "unknown"
}

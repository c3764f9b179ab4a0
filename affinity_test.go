package wsproxy

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzStripCookie: the proxy's cookie comes out of any Cookie line a client
// sends, and every other cookie net/http would read stays, unchanged.
// stripCookie leaves out empty parts, so a line of more parts (";") than
// net/http reads at all (3,000 in Go 1.26: it then reads none) can come
// out short enough to read: the cookies are compared as net/http reads
// them without that limit (readCookies).
func FuzzStripCookie(f *testing.F) {
	for _, seed := range []struct{ line, name string }{
		{"wsproxy_lb=abc", "wsproxy_lb"},
		{"a=1; wsproxy_lb=abc; b=2", "wsproxy_lb"},
		{"wsproxy_lb=abc;wsproxy_lb=def", "wsproxy_lb"},
		{`a="q"; lb=; ;; lb`, "lb"},
		{"  lb = x ; c=3", "lb"},
		{"a=1", "lb"},
	} {
		f.Add(seed.line, seed.name)
	}
	f.Fuzz(func(t *testing.T, line, name string) {
		if (&http.Cookie{Name: name, Value: "x"}).Valid() != nil {
			return
		}
		h := http.Header{"Cookie": {line}}
		stripCookie(h, name)
		for _, l := range h["Cookie"] {
			if _, ok := findCookie(l, name); ok {
				t.Fatalf("%q still names %q after stripping: %q", line, name, l)
			}
		}
		var want []string
		for _, c := range readCookies([]string{line}) {
			if c.Name != name {
				want = append(want, c.Name+"="+c.Value)
			}
		}
		var got []string
		for _, c := range readCookies(h["Cookie"]) {
			got = append(got, c.Name+"="+c.Value)
		}
		if len(got) != len(want) {
			t.Fatalf("%q without %q: got cookies %q, want %q", line, name, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%q without %q: got cookies %q, want %q", line, name, got, want)
			}
		}
	})
}

// readCookies returns the cookies of the Cookie lines as net/http reads
// them, but for its limit on the number of parts: each line is read in
// pieces of at most 1,000 parts, which are independent of each other.
func readCookies(lines []string) []*http.Cookie {
	var out []*http.Cookie
	for _, line := range lines {
		parts := strings.Split(line, ";")
		for len(parts) > 0 {
			n := min(len(parts), 1000)
			piece := strings.Join(parts[:n], ";")
			parts = parts[n:]
			out = append(out, (&http.Request{Header: http.Header{"Cookie": {piece}}}).Cookies()...)
		}
	}
	return out
}

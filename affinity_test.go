package wsproxy

import (
	"net/http"
	"testing"
)

// FuzzStripCookie: the proxy's cookie comes out of any Cookie line a client
// sends, and every other cookie net/http would read stays, unchanged.
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
		before := (&http.Request{Header: http.Header{"Cookie": {line}}}).Cookies()
		after := (&http.Request{Header: h}).Cookies()
		var want []string
		for _, c := range before {
			if c.Name != name {
				want = append(want, c.Name+"="+c.Value)
			}
		}
		var got []string
		for _, c := range after {
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

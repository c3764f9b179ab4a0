// Package snippet helps tests check that the code a document shows is the
// code the test runs: the test cuts both out of their files and compares
// them.
package snippet

import (
	"strings"
	"testing"
)

// Between returns what s holds between the first start and the end after
// it, failing the test when either is missing.
func Between(t testing.TB, s, start, end string) string {
	t.Helper()
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		t.Fatalf("marker %q not found", start)
	}
	body, _, ok := strings.Cut(rest, end)
	if !ok {
		t.Fatalf("end %q not found after %q", end, start)
	}
	return body
}

// Dedent removes up to tabs leading tabs from every line of s: code cut
// out of a function body, as a document shows it.
func Dedent(s string, tabs int) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(s, "\n") {
		for range tabs {
			line = strings.TrimPrefix(line, "\t")
		}
		b.WriteString(line)
	}
	return b.String()
}

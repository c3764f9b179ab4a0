package promqlcheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDocumentedLogRecords: every "wsproxy: ..." record that
// docs/PRODUCTION.md tells operators to watch is a message the library
// logs, with the keys the table gives it.
func TestDocumentedLogRecords(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs/PRODUCTION.md"))
	require.NoError(t, err)
	files, err := filepath.Glob(filepath.Join(root, "*.go"))
	require.NoError(t, err)
	var src strings.Builder
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			src.Write(b)
		}
	}
	row := regexp.MustCompile("(?m)^\\| `(wsproxy: [^`]+)` \\| [a-z]+ \\| ([^|]*) \\|")
	key := regexp.MustCompile("`([a-z_]+)`")
	rows := row.FindAllStringSubmatch(string(doc), -1)
	require.GreaterOrEqual(t, len(rows), 8, "the log table of docs/PRODUCTION.md")
	for _, r := range rows {
		msg := r[1]
		// The calls that log msg (the literal as an argument), up to their
		// closing parenthesis.
		var calls []string
		for rest := src.String(); ; {
			i := strings.Index(rest, `"`+msg+`",`)
			if i < 0 {
				break
			}
			call, _, _ := strings.Cut(rest[i:], ")\n")
			calls = append(calls, call)
			rest = rest[i+len(msg):]
		}
		if !assert.NotEmpty(t, calls, "no record %q in the library", msg) {
			continue
		}
		all := strings.Join(calls, "\n")
		for _, k := range key.FindAllStringSubmatch(r[2], -1) {
			assert.True(t, strings.Contains(all, `"`+k[1]+`"`), "record %q has no key %s", msg, k[1])
		}
	}
}

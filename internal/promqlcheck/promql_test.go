package promqlcheck

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/examples/metrics/wsprom"
)

const root = "../.."

// docs hold the PromQL users copy, in ```promql blocks.
var docs = []string{"docs/PRODUCTION.md", "examples/metrics/wsprom/README.md"}

// scrapeLabels are the labels Prometheus adds to every series it scrapes.
var scrapeLabels = []string{"instance", "job"}

// labelValues are the fixed value sets of wsprom's labels that a query may
// match on, by metric and label.
var labelValues = map[string]map[string][]string{
	"wsproxy_tunnels_closed_total": {"reason": wsprom.CloseReasons},
	"wsproxy_rejects_total":        {"reason": wsprom.RejectReasons},
	"wsproxy_affinity_total":       {"result": {"kept", "assigned", "unknown", "down", "full", "failed", "spilled"}},
	"wsproxy_close_codes_total":    {"side": {"client", "backend"}},
	"wsproxy_bytes_total":          {"direction": {"client_to_backend", "backend_to_client"}},
	"wsproxy_messages_total":       {"direction": {"client_to_backend", "backend_to_client"}},
}

// TestDocumentedQueries: every query of the docs parses, and selects and
// groups by only metrics, labels and label values wsprom exports.
func TestDocumentedQueries(t *testing.T) {
	metrics := exported(t)
	p := parser.NewParser(parser.Options{})
	n := 0
	for _, doc := range docs {
		for _, q := range queries(t, doc) {
			n++
			t.Run(q, func(t *testing.T) {
				expr, err := p.ParseExpr(q)
				require.NoError(t, err, doc)
				var names []string
				for _, sel := range parser.ExtractSelectors(expr) {
					names = append(names, checkSelector(t, metrics, sel))
				}
				require.NotEmpty(t, names)
				// Grouping labels must be labels of a selected metric.
				parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
					if agg, ok := node.(*parser.AggregateExpr); ok {
						for _, l := range agg.Grouping {
							assert.True(t, hasLabel(metrics, names, l), "%s: by (%s) is no label of %v", doc, l, names)
						}
					}
					return nil
				})
			})
		}
	}
	assert.Greater(t, n, 20, "the docs' queries were found")
}

// checkSelector checks one vector selector and returns its metric name.
func checkSelector(t *testing.T, metrics map[string][]string, sel []*labels.Matcher) string {
	t.Helper()
	var name string
	for _, m := range sel {
		if m.Name == model.MetricNameLabel {
			name = m.Value
		}
	}
	base := name
	if b, ok := strings.CutSuffix(name, "_bucket"); ok && metrics[b] != nil {
		base = b // a histogram's buckets: a "le" label more
	}
	labelNames, ok := metrics[base]
	require.True(t, ok, "%s is no metric wsprom exports", name)
	for _, m := range sel {
		if m.Name == model.MetricNameLabel {
			continue
		}
		assert.True(t, slices.Contains(labelNames, m.Name) || slices.Contains(scrapeLabels, m.Name),
			"%s has no label %s", name, m.Name)
		allowed := labelValues[base][m.Name]
		if allowed == nil {
			continue
		}
		for _, v := range alternatives(m) {
			assert.Contains(t, allowed, v, "%s{%s}: not a value it takes", name, m.Name)
		}
	}
	return base
}

// alternatives lists the values a matcher names: its value, or the
// alternatives of a regular expression made of literals only.
func alternatives(m *labels.Matcher) []string {
	switch m.Type {
	case labels.MatchEqual, labels.MatchNotEqual:
		return []string{m.Value}
	}
	if strings.ContainsAny(m.Value, `.*+?()[]{}^$\`) {
		return nil
	}
	return strings.Split(m.Value, "|")
}

func hasLabel(metrics map[string][]string, names []string, label string) bool {
	if label == "le" || slices.Contains(scrapeLabels, label) {
		return true
	}
	for _, n := range names {
		if slices.Contains(metrics[n], label) {
			return true
		}
	}
	return false
}

// queries returns the lines of a document's ```promql blocks, comments
// left out.
func queries(t *testing.T, doc string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, doc))
	require.NoError(t, err)
	var out []string
	in := false
	for line := range strings.SplitSeq(string(b), "\n") {
		switch {
		case line == "```promql":
			in = true
		case line == "```":
			in = false
		case in && strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "#"):
			out = append(out, line)
		}
	}
	require.NotEmpty(t, out, "%s has no ```promql block", doc)
	return out
}

// exported is what a wsprom Collector describes: metric name -> labels.
func exported(t *testing.T) map[string][]string {
	t.Helper()
	descs := make(chan *prometheus.Desc, 64)
	wsprom.New(wsprom.Options{}).Describe(descs)
	close(descs)
	// Desc.String: Desc{fqName: "name", help: "...", constLabels: {}, variableLabels: {a,b}}
	re := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	out := map[string][]string{}
	for d := range descs {
		m := re.FindStringSubmatch(d.String())
		require.NotNil(t, m, d.String())
		out[m[1]] = strings.Split(m[2], ",")
	}
	return out
}

// Command report reads the JSON lines written by cmd/load, takes the median
// of each figure over the rounds, and writes a markdown table with the
// goals of issue 5 checked, and an SVG bar chart.
//
//	report -md bench.md -svg bench.svg results.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"slices"
	"strings"
)

// Result holds the fields of cmd/load's output that the report uses.
type Result struct {
	Mode             string  `json:"mode"`
	Target           string  `json:"target"`
	Round            int     `json:"round"`
	Conns            int     `json:"conns"`
	Errors           int64   `json:"errors"`
	FirstErr         string  `json:"first_err"`
	MsgsPerSec       float64 `json:"msgs_per_sec"`
	P50us            float64 `json:"p50_us"`
	P90us            float64 `json:"p90_us"`
	P99us            float64 `json:"p99_us"`
	MBps             float64 `json:"mb_per_sec"`
	HandshakesPerSec float64 `json:"handshakes_per_sec"`
	CPUusPerMsg      float64 `json:"cpu_us_per_msg"`
	CPUmsPerMB       float64 `json:"cpu_ms_per_mb"`
	CPUusPerHS       float64 `json:"cpu_us_per_handshake"`
	KBPerTunnel      float64 `json:"kb_per_tunnel"`
	PssKBPerTunnel   float64 `json:"pss_kb_per_tunnel"`
	EchoKBPerTunnel  float64 `json:"echoed_kb_per_tunnel"`
	Opened           int     `json:"opened"`
	Echoed           int     `json:"echoed"`
}

// targets in table order: the names cmd/load was given, and their labels.
var targets = []struct{ name, label string }{
	{"direct", "direct"},
	{"wsproxy", "**wsproxy**"},
	{"nginx", "nginx"},
	{"haproxy", "HAProxy"},
	{"caddy", "Caddy"},
	{"rproxy", "httputil.ReverseProxy"},
}

var peers = []string{"nginx", "haproxy", "caddy", "rproxy"}

// A figure is one row: which mode it comes from and which number.
type figure struct {
	title  string
	mode   string
	unit   string // appended to each value
	digits int
	value  func(Result) float64
	higher bool // higher is better
	chart  bool
}

var figures = []figure{
	{"echo, N conns, 128 B, msgs/s", "echo", "", 0, func(r Result) float64 { return r.MsgsPerSec }, true, true},
	{"echo, 1 conn, 128 B, p50 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P50us }, false, true},
	{"echo, 1 conn, 128 B, p90 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P90us }, false, false},
	{"echo, 1 conn, 128 B, p99 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P99us }, false, false},
	{"bulk, 4 conns, 64 KiB frames both ways, MB/s", "bulk", "", 0, func(r Result) float64 { return r.MBps }, true, true},
	{"handshakes/s (8 workers, open+close)", "handshake", "", 0, func(r Result) float64 { return r.HandshakesPerSec }, true, true},
	{"proxy memory per idle tunnel (N open), RSS", "idle", " KB", 1, func(r Result) float64 { return r.KBPerTunnel }, false, true},
	{"proxy memory per idle tunnel (N open), Pss", "idle", " KB", 1, func(r Result) float64 { return r.PssKBPerTunnel }, false, false},
	{"proxy memory per tunnel after one echo each, RSS", "idle", " KB", 1, func(r Result) float64 { return r.EchoKBPerTunnel }, false, false},
	{"proxy CPU per round trip, echo N conns", "echo", " µs", 1, func(r Result) float64 { return r.CPUusPerMsg }, false, false},
	{"proxy CPU per round trip, echo 1 conn", "latency", " µs", 1, func(r Result) float64 { return r.CPUusPerMsg }, false, false},
	{"proxy CPU per MB received, bulk", "bulk", " ms", 2, func(r Result) float64 { return r.CPUmsPerMB }, false, false},
	{"proxy CPU per handshake", "handshake", " µs", 0, func(r Result) float64 { return r.CPUusPerHS }, false, false},
}

// cell is one figure for one target over all rounds.
type cell struct {
	values []float64
	errors int64
	err    string
	bad    bool // an idle run where not every connection echoed
}

func (c *cell) median() (float64, bool) {
	if c == nil || len(c.values) == 0 {
		return 0, false
	}
	v := slices.Sorted(slices.Values(c.values))
	n := len(v)
	if n%2 == 1 {
		return v[n/2], true
	}
	return (v[n/2-1] + v[n/2]) / 2, true
}

func main() {
	mdPath := flag.String("md", "", "write the markdown report here too")
	svgPath := flag.String("svg", "", "write the chart here")
	flag.Parse()

	var results []Result
	inputs := flag.Args()
	if len(inputs) == 0 {
		inputs = []string{"-"}
	}
	for _, path := range inputs {
		rs, err := readResults(path)
		if err != nil {
			log.Fatal(err)
		}
		results = append(results, rs...)
	}

	cells := make(map[[2]string]*cell) // figure title, target
	conns := map[string]int{}
	rounds := 0
	for _, r := range results {
		rounds = max(rounds, r.Round)
		if r.Conns > conns[r.Mode] {
			conns[r.Mode] = r.Conns
		}
		for _, f := range figures {
			if f.mode != r.Mode {
				continue
			}
			k := [2]string{f.title, r.Target}
			c := cells[k]
			if c == nil {
				c = &cell{}
				cells[k] = c
			}
			c.errors += r.Errors
			if c.err == "" {
				c.err = r.FirstErr
			}
			if r.Mode == "idle" && (r.Opened == 0 || r.Echoed != r.Opened) {
				c.bad = true
			}
			if v := f.value(r); v != 0 && !(r.Mode == "idle" && r.Opened == 0) {
				c.values = append(c.values, v)
			}
		}
	}
	get := func(f figure, target string) (float64, bool) { return cells[[2]string{f.title, target}].median() }
	name := func(f figure) string {
		s := strings.ReplaceAll(f.title, "N conns", fmt.Sprintf("%d conns", conns["echo"]))
		return strings.ReplaceAll(s, "N open", fmt.Sprintf("%s open", thousands(float64(conns["idle"]), 0)))
	}

	var b strings.Builder
	fmt.Fprintf(&b, "Medians of %d interleaved rounds; 1 MB = 10^6 bytes, 1 KB = 1024 bytes. "+
		"A value marked † had errors in some round (listed below). "+
		"Proxy CPU is the user+system time of the proxy's processes over the measured window, "+
		"counted in 10 ms ticks: less disturbed by a busy machine than the rates.\n\n", rounds)
	b.WriteString("| figure |")
	for _, t := range targets {
		fmt.Fprintf(&b, " %s |", t.label)
	}
	b.WriteString("\n|---|")
	for range targets {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	var problems []string
	for _, f := range figures {
		fmt.Fprintf(&b, "| %s |", name(f))
		for _, t := range targets {
			c := cells[[2]string{f.title, t.name}]
			v, ok := c.median()
			if !ok {
				b.WriteString(" - |")
				continue
			}
			mark := ""
			if c.errors > 0 || c.bad {
				mark = "†"
				problems = append(problems, fmt.Sprintf("- %s, %s: %d errors, all echoing: %v, first: %s", name(f), t.name, c.errors, !c.bad, c.err))
			}
			fmt.Fprintf(&b, " %s%s%s |", thousands(v, f.digits), f.unit, mark)
		}
		b.WriteString("\n")
	}
	if len(problems) > 0 {
		b.WriteString("\n" + strings.Join(slices.Compact(problems), "\n") + "\n")
	}

	b.WriteString("\n| goal | measured | target | met |\n|---|---:|---:|:---:|\n")
	goal := func(name string, got float64, ok bool, want string, met bool, format string) {
		if !ok {
			fmt.Fprintf(&b, "| %s | - | %s | ? |\n", name, want)
			return
		}
		yes := "no"
		if met {
			yes = "yes"
		}
		fmt.Fprintf(&b, "| %s | "+format+" | %s | %s |\n", name, got, want, yes)
	}
	echo, lat, bulk, hs, idle := figures[0], figures[1], figures[4], figures[5], figures[6]
	ws, okWs := get(echo, "wsproxy")
	best, bestName, okBest := 0.0, "", false
	for _, p := range peers {
		if v, ok := get(echo, p); ok && v > best {
			best, bestName, okBest = v, p, true
		}
	}
	dir, okDir := get(echo, "direct")
	goal(fmt.Sprintf("echo@%d vs best peer (%s)", conns["echo"], bestName), ws/best, okWs && okBest, "≥ 1.15x", ws/best >= 1.15, "%.2fx")
	goal(fmt.Sprintf("echo@%d vs direct", conns["echo"]), ws/dir, okWs && okDir, "≥ 0.85x", ws/dir >= 0.85, "%.2fx")
	wl, ok1 := get(lat, "wsproxy")
	dl, ok2 := get(lat, "direct")
	nl, ok3 := get(lat, "nginx")
	added := (wl - dl) / (nl - dl)
	goal(fmt.Sprintf("echo@1 added p50 vs nginx's (%.0f µs vs %.0f µs)", wl-dl, nl-dl), added, ok1 && ok2 && ok3, "≤ 0.6x", added <= 0.6, "%.2fx")
	wb, ok1 := get(bulk, "wsproxy")
	db, ok2 := get(bulk, "direct")
	goal("bulk vs direct", wb/db, ok1 && ok2, "≥ 0.9x", wb/db >= 0.9, "%.2fx")
	wh, ok1 := get(hs, "wsproxy")
	nh, ok2 := get(hs, "nginx")
	goal("handshakes/s vs nginx", wh/nh, ok1 && ok2, "≥ 1.3x", wh/nh >= 1.3, "%.2fx")
	wi, ok1 := get(idle, "wsproxy")
	allEcho := ok1 && !cells[[2]string{idle.title, "wsproxy"}].bad
	goal(fmt.Sprintf("KB per idle tunnel, %s open, all echoing: %v", thousands(float64(conns["idle"]), 0), allEcho),
		wi, ok1, "≤ 4 KB", wi <= 4 && allEcho, "%.1f KB")

	b.WriteString("\nEvery round, in order:\n\n| figure | target | values |\n|---|---|---|\n")
	for _, f := range figures {
		if !f.chart {
			continue
		}
		for _, t := range targets {
			if c := cells[[2]string{f.title, t.name}]; c != nil {
				var vs []string
				for _, v := range c.values {
					vs = append(vs, thousands(v, f.digits))
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", name(f), t.name, strings.Join(vs, ", "))
			}
		}
	}

	fmt.Print(b.String())
	if *mdPath != "" {
		if err := os.WriteFile(*mdPath, []byte(b.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if *svgPath != "" {
		var charts []chart
		for _, f := range figures {
			if !f.chart {
				continue
			}
			ch := chart{title: name(f), unit: strings.TrimSpace(f.unit), digits: f.digits, higher: f.higher}
			for _, t := range targets {
				v, ok := get(f, t.name)
				ch.bars = append(ch.bars, bar{label: strings.Trim(t.label, "*"), value: v, ok: ok, mine: t.name == "wsproxy"})
			}
			charts = append(charts, ch)
		}
		if err := os.WriteFile(*svgPath, []byte(svg(charts, rounds)), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func readResults(path string) ([]Result, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []Result
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var res Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// thousands formats v with the given decimals and comma separators.
func thousands(v float64, digits int) string {
	s := fmt.Sprintf("%.*f", digits, math.Abs(v))
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	if v < 0 {
		b.WriteByte('-')
	}
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	return b.String()
}

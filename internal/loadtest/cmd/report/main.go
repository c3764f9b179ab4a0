// Command report reads the JSON lines written by cmd/load, takes the median
// of each figure over the rounds, and writes markdown tables (plaintext and
// TLS fronts) with the goals of issue 15 checked as ratios to the best peer,
// and an SVG bar chart.
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
	TLS              string  `json:"tls"`
	MsgsPerSec       float64 `json:"msgs_per_sec"`
	P50us            float64 `json:"p50_us"`
	P90us            float64 `json:"p90_us"`
	P99us            float64 `json:"p99_us"`
	MBps             float64 `json:"mb_per_sec"`
	HandshakesPerSec float64 `json:"handshakes_per_sec"`
	CPUusPerMsg      float64 `json:"cpu_us_per_msg"`
	CPUmsPerMB       float64 `json:"cpu_ms_per_mb"`
	CPUusPerHS       float64 `json:"cpu_us_per_handshake"`
	ProxyUserPerUnit float64 `json:"proxy_user_per_unit"`
	ProxySysPerUnit  float64 `json:"proxy_sys_per_unit"`
	BackendPerUnit   float64 `json:"backend_cpu_per_unit"`
	ClientPerUnit    float64 `json:"client_cpu_per_unit"`
	KBPerTunnel      float64 `json:"kb_per_tunnel"`
	PssKBPerTunnel   float64 `json:"pss_kb_per_tunnel"`
	EchoKBPerTunnel  float64 `json:"echoed_kb_per_tunnel"`
	Opened           int     `json:"opened"`
	Echoed           int     `json:"echoed"`
}

type target struct{ name, label string }

// The two tables, targets in column order: the names cmd/load was given
// and their labels. A TLS front's name is the plaintext one with tlsSuffix.
var (
	plainTargets = []target{
		{"direct", "direct"},
		{"wsproxy", "**wsproxy**"},
		{"nginx", "nginx"},
		{"haproxy", "HAProxy"},
		{"caddy", "Caddy"},
		{"rproxy", "httputil.ReverseProxy"},
	}
	tlsTargets = withTLS(plainTargets[1:])
	targets    = append(slices.Clone(plainTargets), tlsTargets...)
)

const tlsSuffix = "-tls"

func withTLS(ts []target) []target {
	var out []target
	for _, t := range ts {
		out = append(out, target{t.name + tlsSuffix, t.label})
	}
	return out
}

// peers are what wsproxy is compared with; the best of them sets each goal.
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

// The figures of issue 15 (CPU per unit of work, memory per idle tunnel)
// come first and are charted; the rates follow.
var (
	cpuEcho    = figure{"proxy CPU per round trip, echo N conns", "echo", " µs", 1, func(r Result) float64 { return r.CPUusPerMsg }, false, true}
	cpuLatency = figure{"proxy CPU per round trip, echo 1 conn", "latency", " µs", 1, func(r Result) float64 { return r.CPUusPerMsg }, false, true}
	cpuBulk    = figure{"proxy CPU per MB received, bulk", "bulk", " ms", 2, func(r Result) float64 { return r.CPUmsPerMB }, false, true}
	cpuHS      = figure{"proxy CPU per handshake", "handshake", " µs", 0, func(r Result) float64 { return r.CPUusPerHS }, false, true}
	idleRSS    = figure{"proxy memory per idle tunnel (N open), RSS", "idle", " KB", 1, func(r Result) float64 { return r.KBPerTunnel }, false, true}
	echoRate   = figure{"echo, N conns, 128 B, msgs/s", "echo", "", 0, func(r Result) float64 { return r.MsgsPerSec }, true, false}
	bulkRate   = figure{"bulk, 4 conns, 64 KiB frames both ways, MB/s", "bulk", "", 0, func(r Result) float64 { return r.MBps }, true, true}
	hsRate     = figure{"handshakes/s (8 workers, open+close)", "handshake", "", 0, func(r Result) float64 { return r.HandshakesPerSec }, true, false}

	figures = []figure{
		cpuEcho, cpuLatency, cpuBulk, cpuHS,
		// What explains two of the goals: where a handshake's CPU goes, and
		// what a proxy makes the backend and the load tool spend (they share
		// the box, so the bulk rate follows all three).
		{"proxy user CPU per handshake", "handshake", " µs", 0, func(r Result) float64 { return r.ProxyUserPerUnit }, false, false},
		{"proxy system CPU per handshake", "handshake", " µs", 0, func(r Result) float64 { return r.ProxySysPerUnit }, false, false},
		{"backend + load tool CPU per MB received, bulk", "bulk", " ms", 2, func(r Result) float64 { return r.BackendPerUnit + r.ClientPerUnit }, false, false},
		idleRSS,
		{"proxy memory per idle tunnel (N open), Pss", "idle", " KB", 1, func(r Result) float64 { return r.PssKBPerTunnel }, false, false},
		{"proxy memory per tunnel after one echo each, RSS", "idle", " KB", 1, func(r Result) float64 { return r.EchoKBPerTunnel }, false, false},
		echoRate,
		{"echo, 1 conn, 128 B, p50 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P50us }, false, false},
		{"echo, 1 conn, 128 B, p90 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P90us }, false, false},
		{"echo, 1 conn, 128 B, p99 round trip", "latency", " µs", 0, func(r Result) float64 { return r.P99us }, false, false},
		bulkRate, hsRate,
	}
)

// A goal of issue 15 compares wsproxy's median for one figure with the
// best peer's (or one named peer's), as a ratio or in the figure's unit.
type goal struct {
	name  string
	fig   figure
	tls   bool    // the TLS fronts' figure
	vs    string  // compare with this peer only; "" is the best of peers
	limit float64 // a ratio, or with abs a value in the figure's unit
	abs   bool
}

var goals = []goal{
	{"CPU per echo round trip, N conns", cpuEcho, false, "", 0.8, false},
	{"CPU per echo round trip, 1 conn", cpuLatency, false, "", 1.0, false},
	{"CPU per handshake, vs nginx", cpuHS, false, "nginx", 1.2, false},
	{"idle tunnel, N open, RSS, every tunnel echoing after", idleRSS, false, "", 1.5, true},
	{"bulk, CPU per MB", cpuBulk, false, "", 0.8, false},
	{"bulk, MB/s", bulkRate, false, "", 1.1, false},
	{"TLS: idle tunnel, N open, RSS, every tunnel echoing after", idleRSS, true, "", 0.8, false},
	{"TLS: CPU per echo round trip, N conns", cpuEcho, true, "", 0.8, false},
	{"TLS: CPU per echo round trip, 1 conn", cpuLatency, true, "", 0.8, false},
	{"TLS: CPU per handshake", cpuHS, true, "", 1.1, false},
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
	md, charts, rounds := render(results)
	fmt.Print(md)
	if *mdPath != "" {
		if err := os.WriteFile(*mdPath, []byte(md), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if *svgPath != "" {
		if err := os.WriteFile(*svgPath, []byte(svg(charts, rounds)), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// render returns the markdown report of the results, the charts of the
// figures marked for it and the number of rounds.
func render(results []Result) (md string, charts []chart, rounds int) {
	cells := make(map[[2]string]*cell) // figure title, target
	conns := map[string]int{}
	sessions := map[string]string{} // TLS target: its session
	for _, r := range results {
		rounds = max(rounds, r.Round)
		if r.TLS != "" {
			sessions[r.Target] = r.TLS
		}
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
	expand := func(s string) string {
		s = strings.ReplaceAll(s, "N conns", fmt.Sprintf("%d conns", conns["echo"]))
		return strings.ReplaceAll(s, "N open", fmt.Sprintf("%s open", thousands(float64(conns["idle"]), 0)))
	}
	name := func(f figure) string { return expand(f.title) }

	var b strings.Builder
	fmt.Fprintf(&b, "Medians of %d interleaved rounds; 1 MB = 10^6 bytes, 1 KB = 1024 bytes. "+
		"A value marked † had errors in some round (listed below). "+
		"Proxy CPU is the user+system time of all the proxy's processes (/proc/PID/stat) over the measured window, "+
		"counted in 10 ms ticks, divided by the work done in it: less disturbed by a busy machine than the rates. "+
		"The backend's and the load tool's CPU are measured over the same window.\n\n", rounds)

	b.WriteString("Goals of issue 15: wsproxy's median against the best peer's (the best of nginx, HAProxy, Caddy " +
		"and httputil.ReverseProxy for that row, TLS rows against the TLS peers).\n\n" +
		"| goal | wsproxy | best peer | ratio | goal | met |\n|---|---:|---:|---:|---:|:---:|\n")
	for _, g := range goals {
		suffix := ""
		if g.tls {
			suffix = tlsSuffix
		}
		f := g.fig
		cellOf := func(t string) *cell { return cells[[2]string{f.title, t + suffix}] }
		value := func(v float64) string { return thousands(v, f.digits) + f.unit }
		ws, okWs := cellOf("wsproxy").median()
		best, bestName, okBest := 0.0, "", false
		for _, p := range peers {
			if g.vs != "" && p != g.vs {
				continue
			}
			if v, ok := cellOf(p).median(); ok && (!okBest || f.higher && v > best || !f.higher && v < best) {
				best, bestName, okBest = v, p, true
			}
		}
		want, met := "", false
		ratio := ws / best
		cmp, got := "≤", ratio
		if f.higher {
			cmp = "≥"
		}
		if g.abs {
			want, got = fmt.Sprintf("%s %s", cmp, value(g.limit)), ws
		} else {
			want = fmt.Sprintf("%s %.1fx", cmp, g.limit)
		}
		met = f.higher && got >= g.limit || !f.higher && got <= g.limit
		wsCell := value(ws)
		if c := cellOf("wsproxy"); c != nil && (c.bad || c.errors > 0) {
			wsCell += "†"
			met = false // an idle figure counts only when every tunnel still echoed
		}
		if !okWs || !okBest {
			fmt.Fprintf(&b, "| %s | - | - | - | %s | ? |\n", expand(g.name), want)
			continue
		}
		yes := "**no**"
		if met {
			yes = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s | %.2fx | %s | %s |\n", expand(g.name), wsCell, bestName, value(best), ratio, want, yes)
	}

	var problems []string
	table := func(title string, ts []target) {
		fmt.Fprintf(&b, "\n%s\n\n| figure |", title)
		for _, t := range ts {
			fmt.Fprintf(&b, " %s |", t.label)
		}
		b.WriteString("\n|---|")
		for range ts {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		for _, f := range figures {
			fmt.Fprintf(&b, "| %s |", name(f))
			for _, t := range ts {
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
	}
	table("Plaintext in front (ws://):", plainTargets)
	table("TLS in front (wss://, plain backend), one self-signed ECDSA P-256 certificate for all:", tlsTargets)
	if len(problems) > 0 {
		b.WriteString("\n" + strings.Join(slices.Compact(problems), "\n") + "\n")
	}
	if len(sessions) > 0 {
		b.WriteString("\nTLS sessions as the load tool saw them (echo runs):\n\n")
		for _, t := range tlsTargets {
			if s, ok := sessions[t.name]; ok {
				fmt.Fprintf(&b, "- %s: %s\n", t.name, s)
			}
		}
	}

	b.WriteString("\nEvery round, in order:\n\n| figure | target | values |\n|---|---|---|\n")
	for _, f := range figures {
		if !f.chart && f.mode != "echo" && f.mode != "handshake" {
			continue
		}
		for _, t := range targets {
			if c := cells[[2]string{f.title, t.name}]; c != nil && len(c.values) > 0 {
				var vs []string
				for _, v := range c.values {
					vs = append(vs, thousands(v, f.digits))
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", name(f), t.name, strings.Join(vs, ", "))
			}
		}
	}

	for _, f := range figures {
		if !f.chart {
			continue
		}
		ch := chart{title: name(f), unit: strings.TrimSpace(f.unit), digits: f.digits, higher: f.higher}
		for _, t := range targets {
			v, ok := get(f, t.name)
			if !ok && t.name == "direct" {
				continue // a proxy's CPU and memory: no direct bar
			}
			label := strings.Trim(t.label, "*")
			if strings.HasSuffix(t.name, tlsSuffix) {
				label += " TLS"
			}
			ch.bars = append(ch.bars, bar{label: label, value: v, ok: ok, mine: strings.HasPrefix(t.name, "wsproxy")})
		}
		charts = append(charts, ch)
	}
	return b.String(), charts, rounds
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

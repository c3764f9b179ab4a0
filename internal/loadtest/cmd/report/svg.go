package main

import (
	"fmt"
	"html"
	"strings"
)

type bar struct {
	label string
	value float64
	ok    bool
	mine  bool // wsproxy, drawn in its own colour
}

type chart struct {
	title  string
	unit   string
	digits int
	higher bool
	bars   []bar
}

// Layout of the chart, in pixels: one panel per figure, one horizontal bar
// per target, each panel scaled to its own largest value.
const (
	width    = 760
	labelW   = 170
	barH     = 18
	barGap   = 6
	titleH   = 26
	panelGap = 18
	valueW   = 90
)

func svg(charts []chart, rounds int) string {
	var b strings.Builder
	height := 40
	for _, c := range charts {
		height += titleH + len(c.bars)*(barH+barGap) + panelGap
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="15" font-weight="bold">wsproxy and its peers on loopback (median of %d rounds)</text>`+"\n", rounds)
	y := 40
	for _, c := range charts {
		better := "higher is better"
		if !c.higher {
			better = "lower is better"
		}
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s <tspan font-weight="normal" fill="#666">(%s)</tspan></text>`+"\n",
			y+16, html.EscapeString(c.title), better)
		y += titleH
		top := 0.0
		for _, br := range c.bars {
			top = max(top, br.value)
		}
		for _, br := range c.bars {
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-8, y+barH-5, html.EscapeString(br.label))
			val := "-"
			w := 0.0
			if br.ok && top > 0 {
				w = br.value / top * float64(width-labelW-valueW)
				val = thousands(br.value, c.digits)
				if c.unit != "" {
					val += " " + c.unit
				}
			}
			fill := "#9aa5b1"
			if br.mine {
				fill = "#d9480f"
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", labelW, y, w, barH, fill)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(labelW)+w+6, y+barH-5, html.EscapeString(val))
			y += barH + barGap
		}
		y += panelGap
	}
	b.WriteString("</svg>\n")
	return b.String()
}

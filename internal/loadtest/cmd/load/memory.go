package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mem is the memory of a group of processes in KiB: resident set size
// from /proc/PID/status and proportional set size from smaps_rollup, which
// counts pages shared between an nginx master and its workers once.
type mem struct{ rss, pss int64 }

func parsePids(s string) ([]int, error) {
	if s == "" {
		return nil, fmt.Errorf("idle: -pid is required")
	}
	var pids []int
	for f := range strings.SplitSeq(s, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("idle: bad pid %q", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

func memory(pids []int) (mem, error) {
	var m mem
	for _, pid := range pids {
		rss, err := procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
		if err != nil {
			return m, err
		}
		pss, err := procField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
		if err != nil {
			return m, err
		}
		m.rss += rss
		m.pss += pss
	}
	return m, nil
}

// ticks is the user and system time of a group of processes, in clock
// ticks.
type ticks struct{ user, sys int64 }

// cpuTicks returns the user and system time the processes used so far.
func cpuTicks(pids []int) (ticks, error) {
	var total ticks
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return ticks{}, err
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return ticks{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
		}
		var n [2]int64
		for j, s := range f[11:13] {
			if n[j], err = strconv.ParseInt(s, 10, 64); err != nil {
				return ticks{}, err
			}
		}
		total.user += n[0]
		total.sys += n[1]
	}
	return total, nil
}

// clockTick is USER_HZ, 100 on every Linux architecture Go supports.
const clockTick = 100

// procField returns the value in kB of a "Name:   123 kB" line.
func procField(path, name string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s line", path, name)
}

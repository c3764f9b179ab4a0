package main

import "time"

// usage is the CPU time used over a measured window: the proxy's (-pid),
// user and system apart, the backend's (-backend-pid) and the load tool's
// own. The backend and the load tool share the machine with the proxy, so
// what a proxy makes them spend moves every rate as much as its own CPU.
type usage struct {
	proxy, backend ticks
	self           time.Duration
}

// meter is a window being measured.
type meter struct {
	cfg            config
	proxy, backend ticks
	self           time.Duration
}

func startMeter(cfg config) meter {
	m := meter{cfg: cfg, self: selfCPU()}
	m.proxy, _ = cpuTicks(cfg.pidList)
	m.backend, _ = cpuTicks(cfg.backendPids)
	return m
}

func (m meter) stop() usage {
	proxy, _ := cpuTicks(m.cfg.pidList)
	backend, _ := cpuTicks(m.cfg.backendPids)
	return usage{
		proxy:   ticks{proxy.user - m.proxy.user, proxy.sys - m.proxy.sys},
		backend: ticks{backend.user - m.backend.user, backend.sys - m.backend.sys},
		self:    selfCPU() - m.self,
	}
}

func seconds(t int64) float64 { return float64(t) / clockTick }

// setCPU records u for n units of work, per unit at scale (1e6: µs per
// unit; 1e9 over bytes: ms per MB), and returns the proxy's CPU per unit,
// the mode's own figure.
func (r *Result) setCPU(u usage, n int64, scale float64) float64 {
	proxy := seconds(u.proxy.user + u.proxy.sys)
	r.ProxyCPUSeconds = proxy
	r.ProxyUserPerUnit = perUnit(seconds(u.proxy.user), n, scale)
	r.ProxySysPerUnit = perUnit(seconds(u.proxy.sys), n, scale)
	r.BackendCPUSeconds = seconds(u.backend.user + u.backend.sys)
	r.BackendPerUnit = perUnit(r.BackendCPUSeconds, n, scale)
	r.ClientCPUSeconds = u.self.Seconds()
	r.ClientPerUnit = perUnit(r.ClientCPUSeconds, n, scale)
	return perUnit(proxy, n, scale)
}

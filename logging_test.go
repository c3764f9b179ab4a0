package wsproxy

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wsproxy/wsproxy/internal/wsframe"
)

// logRecorder is a slog.Handler that keeps every record, at every level.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// find returns the records with message msg.
func (h *logRecorder) find(msg string) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.records {
		if r.Message == msg {
			out = append(out, r)
		}
	}
	return out
}

func withRecorder() (*logRecorder, Option) {
	h := &logRecorder{}
	return h, WithLogger(slog.New(h))
}

// attrs returns a record's attributes by key.
func attrs(r slog.Record) map[string]slog.Value {
	m := make(map[string]slog.Value)
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value
		return true
	})
	return m
}

func keysOf(r slog.Record) []string {
	var keys []string
	for k := range attrs(r) {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestTunnelClosedRecordKeys: the "tunnel closed" record carries the keys
// the README lists.
func TestTunnelClosedRecordKeys(t *testing.T) {
	t.Parallel()
	logs, logOpt := withRecorder()
	closed := make(chan CloseInfo, 1)
	_, url := newProxy(t, []string{newEcho(t)}, logOpt, WithHooks(Hooks{OnClose: func(ci CloseInfo) { closed <- ci }}),
		WithMaxMessageSize(4), WithCloseTimeout(50*time.Millisecond))
	c := dial(t, url+"/chat")
	require.NoError(t, c.WriteMessage(wsframe.OpText, []byte("too long")))
	<-closed
	recs := logs.find("wsproxy: tunnel closed")
	require.Len(t, recs, 1)
	assert.Equal(t, slog.LevelDebug, recs[0].Level)
	assert.Equal(t, []string{"bytes_in", "bytes_out", "duration", "path", "reason", "remote_addr", "target"}, keysOf(recs[0]))
	assert.Equal(t, "/chat", attrs(recs[0])["path"].String())
}

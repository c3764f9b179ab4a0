package tunnel

import (
	"fmt"
	"net"
	"testing"

	"github.com/wsproxy/wsproxy/internal/wsframe"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// discardConn is a net.Conn whose writes vanish, for driving a pump
// without sockets.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }
func (discardConn) Close() error                { return nil }

// BenchmarkFrameTracking runs a pump's frame tracking over a 32 KiB chunk
// of masked client frames, as it comes off a socket.
func BenchmarkFrameTracking(b *testing.B) {
	for _, size := range []int{16, 128, 4096} {
		b.Run(fmt.Sprintf("%dB-frames", size), func(b *testing.B) {
			var stream []byte
			for len(stream) < bufSize-wsframe.MaxHeaderLen-size {
				stream = wstest.AppendFrame(stream, wstest.Frame{Fin: true, Op: wsframe.OpBinary, Payload: make([]byte, size)}, true)
			}
			tn := &Tunnel{cfg: &Config{}, back: discardConn{}}
			pu := &pump{t: tn, fromClient: true}
			buf := make([]byte, bufHeadroom+bufSize)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				n := copy(buf[bufHeadroom:], stream)
				if err := pu.chunk(buf, n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

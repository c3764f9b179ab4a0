package interop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
)

// frameConn is a message layer over gobwas/ws's low-level frame functions,
// for both the gobwas client and the gobwas backend: it reassembles
// fragments, answers pings, and inflates/deflates messages when
// permessage-deflate was negotiated (no context takeover, as
// wsflate.DefaultParameters asks for).
type frameConn struct {
	conn    net.Conn
	br      *bufio.Reader
	client  bool // mask what we write
	deflate bool
	wmu     sync.Mutex
	onPong  func([]byte)
}

// closeErr is what recv returns when the peer sent a close frame.
type closeErr struct {
	code   int
	reason string
}

func (e *closeErr) Error() string { return fmt.Sprintf("close %d %q", e.code, e.reason) }

func (c *frameConn) writeFrame(f ws.Frame) error {
	if c.client {
		// MaskFrameInPlace masks the payload in place: mask a copy, the
		// caller still needs the message.
		f.Payload = append([]byte(nil), f.Payload...)
		f = ws.MaskFrameInPlace(f)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return ws.WriteFrame(c.conn, f)
}

// send writes a message, compressed when deflate is on, split into frames
// of the given sizes (one frame when parts is empty).
func (c *frameConn) send(op ws.OpCode, p []byte, parts ...int) error {
	rsv := byte(0)
	if c.deflate {
		f, err := wsflate.CompressFrame(ws.NewFrame(op, true, p))
		if err != nil {
			return err
		}
		p, rsv = f.Payload, f.Header.Rsv
	}
	if len(parts) == 0 {
		parts = []int{len(p)}
	}
	for i := 0; ; i++ {
		n := len(p)
		if i < len(parts)-1 && parts[i] < n {
			n = parts[i]
		}
		f := ws.NewFrame(op, n == len(p), p[:n])
		if i == 0 {
			f.Header.Rsv = rsv
		} else {
			f.Header.OpCode = ws.OpContinuation
		}
		if err := c.writeFrame(f); err != nil {
			return err
		}
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
	}
}

func (c *frameConn) writeControl(op ws.OpCode, p []byte) error {
	return c.writeFrame(ws.NewFrame(op, true, p))
}

func (c *frameConn) readFrame() (ws.Frame, error) {
	f, err := ws.ReadFrame(c.br)
	if err != nil {
		return f, err
	}
	if f.Header.Masked == c.client {
		return f, fmt.Errorf("frame masked=%v read by client=%v", f.Header.Masked, c.client)
	}
	if f.Header.Masked {
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		f.Header.Masked = false
	}
	return f, nil
}

// recv returns the next data message. It answers pings, reports pongs to
// onPong and returns *closeErr (after answering the close) when the peer
// closes.
func (c *frameConn) recv() (ws.OpCode, []byte, error) {
	var (
		op   ws.OpCode
		rsv  byte
		msg  bytes.Buffer
		open bool
	)
	for {
		f, err := c.readFrame()
		if err != nil {
			return 0, nil, err
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			if err := c.writeControl(ws.OpPong, f.Payload); err != nil {
				return 0, nil, err
			}
			continue
		case ws.OpPong:
			if c.onPong != nil {
				c.onPong(f.Payload)
			}
			continue
		case ws.OpClose:
			code, reason := 1005, ""
			if len(f.Payload) >= 2 {
				code = int(f.Payload[0])<<8 | int(f.Payload[1])
				reason = string(f.Payload[2:])
			}
			_ = c.writeControl(ws.OpClose, f.Payload[:min(2, len(f.Payload))])
			return 0, nil, &closeErr{code, reason}
		case ws.OpContinuation:
			if !open {
				return 0, nil, errors.New("continuation frame outside a message")
			}
		default:
			if open {
				return 0, nil, errors.New("new message inside a fragmented one")
			}
			op, rsv, open = f.Header.OpCode, f.Header.Rsv, true
		}
		msg.Write(f.Payload)
		if !f.Header.Fin {
			continue
		}
		p := msg.Bytes()
		if rsv&0x4 != 0 { // RSV1: compressed
			if !c.deflate {
				return 0, nil, errors.New("compressed message without permessage-deflate")
			}
			d, err := wsflate.DecompressFrame(ws.Frame{Header: ws.Header{Fin: true, Rsv: rsv, OpCode: op, Length: int64(len(p))}, Payload: p})
			if err != nil {
				return 0, nil, err
			}
			p = d.Payload
		}
		return op, p, nil
	}
}

// closeAndWait sends a close frame and reads until the peer's close or EOF.
func (c *frameConn) closeAndWait(code int, reason string) (*closeErr, error) {
	if err := c.writeControl(ws.OpClose, ws.NewCloseFrameBody(ws.StatusCode(code), reason)); err != nil {
		return nil, err
	}
	for {
		f, err := c.readFrame()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if f.Header.OpCode == ws.OpClose {
			ce := &closeErr{code: 1005}
			if len(f.Payload) >= 2 {
				ce.code = int(f.Payload[0])<<8 | int(f.Payload[1])
				ce.reason = string(f.Payload[2:])
			}
			return ce, nil
		}
	}
}

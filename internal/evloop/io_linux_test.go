package evloop

import (
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/wsproxy/wsproxy/internal/wstest"
)

// The socket outlives its net.Conn through the descriptor DupConn gives,
// which is non-blocking and not inherited by child processes.
func TestDupConnKeepsTheSocketAfterClose(t *testing.T) {
	t.Parallel()
	c, s := wstest.TCPPair(t)
	fd, err := DupConn(s)
	require.NoError(t, err)
	defer syscall.Close(fd)
	require.NoError(t, s.Close())

	fdFlags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	require.Zero(t, errno)
	assert.NotZero(t, fdFlags&syscall.FD_CLOEXEC, "close-on-exec")
	flFlags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFL, 0)
	require.Zero(t, errno)
	assert.NotZero(t, flFlags&syscall.O_NONBLOCK, "non-blocking")

	n, err := Write(fd, []byte("through the dup"))
	require.NoError(t, err)
	got := make([]byte, n)
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	assert.Equal(t, "through the dup", string(got))
}

func TestDupConnOfAClosedConn(t *testing.T) {
	t.Parallel()
	_, s := wstest.TCPPair(t)
	require.NoError(t, s.Close())
	fd, err := DupConn(s)
	assert.Error(t, err)
	assert.Equal(t, -1, fd)
}

// Read and Write say what the edge-triggered handler needs to know: nothing
// more now, a short read, a short write, the end of the stream.
func TestReadWriteNonBlocking(t *testing.T) {
	t.Parallel()
	c, fd := dupServer(t)
	defer syscall.Close(fd)
	buf := make([]byte, 64)

	_, err := Read(fd, buf)
	assert.ErrorIs(t, err, ErrWouldBlock, "nothing sent yet")

	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)
	require.True(t, waitFor(testTimeout, func() bool { return hasData(fd) }))
	n, err := Read(fd, buf)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(buf[:n]))
	// The short-read rule rests on this: the read that returned less than
	// the buffer left nothing behind.
	_, err = Read(fd, buf)
	assert.ErrorIs(t, err, ErrWouldBlock)

	// Write until the kernel takes no more: the short write says how much
	// went, with ErrWouldBlock.
	big := make([]byte, 1<<20)
	var sent int
	for {
		n, err := Write(fd, big)
		sent += n
		if err != nil {
			require.ErrorIs(t, err, ErrWouldBlock)
			assert.Less(t, n, len(big))
			break
		}
	}
	require.NoError(t, ShutdownWrite(fd))
	got, err := io.ReadAll(c)
	require.NoError(t, err, "the FIN ends the client's read")
	assert.Len(t, got, sent)

	require.NoError(t, c.CloseWrite())
	require.True(t, waitFor(testTimeout, func() bool {
		_, err := Read(fd, buf)
		return !errors.Is(err, ErrWouldBlock)
	}))
	_, err = Read(fd, buf)
	assert.ErrorIs(t, err, io.EOF, "after the client's FIN")
}

// A write to a socket the peer has reset fails with the socket's error,
// not a signal.
func TestWriteToAResetSocket(t *testing.T) {
	t.Parallel()
	fd := resetSocket(t)
	require.True(t, waitFor(testTimeout, func() bool {
		_, err := Write(fd, []byte("x"))
		return err != nil
	}))
	_, err := Write(fd, []byte("x"))
	assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "got %v", err)
}

// A read of a socket the peer has reset returns the socket's error, as
// *os.SyscallError, not io.EOF or ErrWouldBlock.
func TestReadFromAResetSocket(t *testing.T) {
	t.Parallel()
	fd := resetSocket(t)
	buf := make([]byte, 64)
	var err error
	require.True(t, waitFor(testTimeout, func() bool {
		_, err = Read(fd, buf)
		return !errors.Is(err, ErrWouldBlock)
	}))
	var se *os.SyscallError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "read", se.Syscall)
	assert.ErrorIs(t, err, syscall.ECONNRESET)
}

// resetSocket returns a descriptor of a socket whose peer has reset it,
// closed at the end of the test.
func resetSocket(t *testing.T) int {
	t.Helper()
	c, fd := dupServer(t)
	t.Cleanup(func() { syscall.Close(fd) })
	require.NoError(t, c.SetLinger(0))
	require.NoError(t, c.Close()) // an RST
	return fd
}

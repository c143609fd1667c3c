package bfd

import (
	"log/slog"
	"testing"
)

// testLogger logs through t.Log (shown with -v or on failure), tagged with who; benchmarks log nothing.
func testLogger(tb testing.TB, who string) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("ns", who)
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(string(b[:len(b)-1]))
	return len(b), nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/process"
)

// handleProcessors serves the processors' status and operations:
//
//	GET  /v1/processors                      this node's partitions: position, lag (events, age), counts
//	GET  /v1/outbox                          this node's outboxes: records not yet delivered, their age
//	POST /v1/processors/{name}/pause         every member stops handling within about a poll
//	POST /v1/processors/{name}/resume
//	POST /v1/processors/{name}/replay?partition=P&from=POS
func handleProcessors(mux *http.ServeMux, rt *process.Runtime) {
	if rt == nil {
		return
	}
	mux.HandleFunc("GET /v1/processors", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rt.Status())
	})
	mux.HandleFunc("GET /v1/outbox", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rt.Outbox())
	})
	op := func(do func(ctx context.Context, r *http.Request, name string) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			if err := do(ctx, r, r.PathValue("name")); err != nil {
				http.Error(w, err.Error(), opStatus(err))
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		}
	}
	mux.HandleFunc("POST /v1/processors/{name}/pause", op(func(ctx context.Context, _ *http.Request, name string) error {
		return rt.Pause(ctx, name)
	}))
	mux.HandleFunc("POST /v1/processors/{name}/resume", op(func(ctx context.Context, _ *http.Request, name string) error {
		return rt.Resume(ctx, name)
	}))
	mux.HandleFunc("POST /v1/processors/{name}/replay", op(func(ctx context.Context, r *http.Request, name string) error {
		part, err1 := strconv.Atoi(r.URL.Query().Get("partition"))
		from, err2 := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return errors.Join(api.ErrBadRequest, errors.New("replay needs ?partition=P&from=POS"), err)
		}
		return rt.Replay(ctx, name, part, from)
	}))
}

func opStatus(err error) int {
	switch {
	case errors.Is(err, process.ErrUnknownProcessor):
		return http.StatusNotFound
	case errors.Is(err, api.ErrBadRequest):
		return http.StatusBadRequest
	default:
		return http.StatusServiceUnavailable
	}
}

package main

import (
	"encoding/json"
	"net/http"

	"github.com/collocate/grid/txn/txnnode"
)

// handleTransactions serves the transaction state of the partitions this
// node leads:
//
//	GET /v1/transactions   locks held, prepared records (the first ones
//	                       named, with how long past their deadline),
//	                       decisions and tombstones kept, and what this
//	                       member's recovery resolved and collected
//
// After every transaction ended (and recovery ran for callers that died)
// locks and prepared are 0 at every primary: the chaos suite's bank mode
// checks it.
func handleTransactions(mux *http.ServeMux, txs *txnnode.Service) {
	if txs == nil {
		return
	}
	mux.HandleFunc("GET /v1/transactions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(txs.Report())
	})
}

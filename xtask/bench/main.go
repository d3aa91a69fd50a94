// Allocation microbenchmark for gomemtrace's probe-cost benchmark: N allocations of a
// 64-byte pointerful object in one goroutine, reporting allocations per second.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

type object struct {
	next *object
	pad  [7]uint64
}

var sink *object

func main() {
	n := 2_000_000
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		o := &object{next: sink}
		o.next = nil
		sink = o
	}
	elapsed := time.Since(start)
	fmt.Printf("allocs_per_sec %.0f\n", float64(n)/elapsed.Seconds())
}

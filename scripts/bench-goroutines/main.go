// Command bench-goroutines measures goroutine creation: -n goroutines, each created by a
// `go` statement a few frames deep and exiting at once, in batches of 1000 waited on with
// a WaitGroup. Prints "creations/s N". Used by scripts/bench-goroutines.sh.
package main

import (
	"flag"
	"fmt"
	"sync"
	"time"
)

//go:noinline
func spawn(wg *sync.WaitGroup) {
	wg.Add(1)
	go func() { wg.Done() }()
}

//go:noinline
func layer(depth int, wg *sync.WaitGroup) {
	if depth == 0 {
		spawn(wg)
		return
	}
	layer(depth-1, wg)
}

func main() {
	n := flag.Int("n", 200000, "goroutines to create")
	depth := flag.Int("depth", 8, "frames between main and the go statement")
	flag.Parse()
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *n; i += 1000 {
		for j := 0; j < 1000; j++ {
			layer(*depth, &wg)
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	fmt.Printf("creations/s %.0f\n", float64(*n)/elapsed.Seconds())
}

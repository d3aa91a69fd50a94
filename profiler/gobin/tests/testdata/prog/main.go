// Test program for gomemtrace-gobin: named functions, an inlined helper, small and
// large allocations of a named struct type, and goroutines. Standard library only.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

// Small is a pointer-carrying struct small enough for the size-specialized allocators.
type Small struct {
	Next  *Small
	Value int
}

// NoPtr holds no pointers (allocated by the no-scan paths).
type NoPtr struct {
	A, B, C, D int64
}

var sink []*Small
var bigSink [][]byte

// scale is small enough to be inlined into sumScaled.
func scale(x int) int {
	if x > 1000 {
		return x * 7
	}
	return x*3 + 1
}

//go:noinline
func sumScaled(xs []int) int {
	total := 0
	for _, x := range xs {
		total += scale(x) // INLINED-CALL-SITE
	}
	return total
}

//go:noinline
func newSmall(v int) *Small {
	s := &Small{Value: v}
	sink = append(sink, s)
	return s
}

//go:noinline
func newNoPtr(v int64) *NoPtr {
	return &NoPtr{A: v, B: v + 1}
}

//go:noinline
func allocLarge(n int) []byte {
	b := make([]byte, n)
	bigSink = append(bigSink, b)
	return b
}

//go:noinline
func recurse(depth int) int {
	if depth == 0 {
		newSmall(depth)
		return 0
	}
	return recurse(depth-1) + 1
}

func worker(id int, rounds int, wg *sync.WaitGroup) {
	defer wg.Done()
	for i := 0; i < rounds; i++ {
		newSmall(id + i)
		newNoPtr(int64(i))
		recurse(10)
		if i%100 == 0 {
			allocLarge(64 << 10)
		}
	}
}

func main() {
	rounds := 1000
	if len(os.Args) > 1 {
		if n, err := strconv.Atoi(os.Args[1]); err == nil {
			rounds = n
		}
	}
	var wg sync.WaitGroup
	for id := 0; id < 4; id++ {
		wg.Add(1)
		go worker(id, rounds, &wg)
	}
	wg.Wait()
	xs := make([]int, 100)
	for i := range xs {
		xs[i] = i * 37
	}
	fmt.Println(sumScaled(xs), len(sink), len(bigSink))
}

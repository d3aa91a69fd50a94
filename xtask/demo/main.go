// A small service-like Go workload for gomemtrace's demo: JSON round trips, a string-keyed
// cache with churn, byte buffers, and a worker pool, for a few seconds.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

type Order struct {
	ID       int               `json:"id"`
	Customer string            `json:"customer"`
	Items    []Item            `json:"items"`
	Meta     map[string]string `json:"meta"`
}

type Item struct {
	SKU   string  `json:"sku"`
	Price float64 `json:"price"`
	Qty   int     `json:"qty"`
}

var sink []byte

func makeOrder(id int) *Order {
	o := &Order{ID: id, Customer: "customer-" + strconv.Itoa(id%97), Meta: map[string]string{"region": "eu"}}
	for i := 0; i < 4; i++ {
		o.Items = append(o.Items, Item{SKU: fmt.Sprintf("sku-%d-%d", id, i), Price: 9.99, Qty: i + 1})
	}
	return o
}

func jsonRoundTrips(n int) {
	for i := 0; i < n; i++ {
		data, _ := json.Marshal(makeOrder(i))
		var back Order
		_ = json.Unmarshal(data, &back)
	}
}

func cacheChurn(n int) {
	cache := make(map[string][]byte)
	for i := 0; i < n; i++ {
		key := "session:" + strconv.Itoa(i%4096)
		cache[key] = make([]byte, 256)
		if len(cache) > 2048 {
			for k := range cache {
				delete(cache, k)
				break
			}
		}
	}
}

func buildReports(n int) {
	for i := 0; i < n; i++ {
		var buf bytes.Buffer
		for j := 0; j < 64; j++ {
			fmt.Fprintf(&buf, "line %d of report %d\n", j, i)
		}
		sink = buf.Bytes()
	}
}

func main() {
	rounds := 3
	if len(os.Args) > 1 {
		rounds, _ = strconv.Atoi(os.Args[1])
	}
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for _, work := range []func(int){jsonRoundTrips, cacheChurn, buildReports} {
			wg.Add(1)
			go func(f func(int)) {
				defer wg.Done()
				f(2000)
			}(work)
		}
		wg.Wait()
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("demo: done")
}

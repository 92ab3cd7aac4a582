// Pushes one step with client_golang's push package, unmodified, for push_clients.py:
// protobuf bodies (the package's default), every metric type, a native histogram, and a
// grouping key whose values need base64 ("/var/lib", "") and query escaping ("a b+c").
// usage: push_golang URL STEP, STEP one of push, add, replace, delete.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/push"
)

// pusher is the group every step pushes to: job "nightly" and three grouping labels.
func pusher(url string) *push.Pusher {
	return push.New(url, "nightly").Grouping("path", "/var/lib").Grouping("empty", "").Grouping("note", "a b+c")
}

// everyType holds a metric of each type, with values push_clients.py checks exactly.
func everyType() []prometheus.Collector {
	items := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "batch_items_total", Help: "Items the batch handled."}, []string{"kind"})
	items.WithLabelValues("mail").Add(7)
	items.WithLabelValues("sms").Inc()
	last := prometheus.NewGauge(prometheus.GaugeOpts{Name: "batch_last_success_seconds", Help: "When the batch last succeeded."})
	last.Set(1700000000.5)
	itemSeconds := prometheus.NewSummary(prometheus.SummaryOpts{Name: "batch_item_seconds", Help: "Seconds per item.",
		Objectives: map[float64]float64{0.5: 0.05, 0.9: 0.01}})
	sizes := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "batch_size_bytes", Help: "Sizes.", Buckets: []float64{10, 100, 1e6}})
	// A native histogram with classic buckets beside, and one with none.
	durations := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "batch_duration_seconds", Help: "Durations.",
		Buckets: []float64{1}, NativeHistogramBucketFactor: 1.1})
	waits := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "batch_wait_seconds", Help: "Waits.",
		NativeHistogramBucketFactor: 1.1})
	for _, value := range []float64{0.25, 0.5, 4} {
		itemSeconds.Observe(value)
	}
	for _, value := range []float64{5, 50, 500, 5e6} {
		sizes.Observe(value)
	}
	for _, value := range []float64{0, 0.5, 1, 1.5, 3, -2} {
		durations.Observe(value)
		waits.Observe(value)
	}
	untyped := prometheus.NewUntypedFunc(prometheus.UntypedOpts{Name: "batch_untyped", Help: "Untyped."}, func() float64 { return 42 })
	escaped := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "batch_escaped", Help: "Help with \\ and \n."}, []string{"value"})
	escaped.WithLabelValues("q\"b\\s\nl é").Set(-1.5)
	return []prometheus.Collector{items, last, itemSeconds, sizes, durations, waits, untyped, escaped}
}

func step(url, name string) error {
	switch name {
	case "push": // PUT: every type
		p := pusher(url)
		for _, collector := range everyType() {
			p.Collector(collector)
		}
		return p.Push()
	case "add": // POST: a new value of one family and a family more; the others stay
		last := prometheus.NewGauge(prometheus.GaugeOpts{Name: "batch_last_success_seconds", Help: "When the batch last succeeded."})
		last.Set(1800000000)
		retries := prometheus.NewCounter(prometheus.CounterOpts{Name: "batch_retries_total", Help: "Retries."})
		retries.Add(2)
		return pusher(url).Collector(last).Collector(retries).Add()
	case "replace": // PUT: the group keeps only this family
		retries := prometheus.NewCounter(prometheus.CounterOpts{Name: "batch_retries_total", Help: "Retries."})
		retries.Add(3)
		return pusher(url).Collector(retries).Push()
	case "delete":
		return pusher(url).Delete()
	}
	return fmt.Errorf("unknown step %q", name)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: push_golang URL push|add|replace|delete")
		os.Exit(2)
	}
	if err := step(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "push_golang:", err)
		os.Exit(1)
	}
}

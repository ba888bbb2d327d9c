// A MeterProvider for the SDK's own bookkeeping whose counters add up in place.
//
//   new BatchSpanProcessor(exporter, { selfObsMeterProvider: coalesced(meterProvider) })
//
// Why: with the collector dead the span queue stays full, and the batch processor counts every
// span it drops with `counter.add(1, attrs)`. On a real counter each add hashes its attribute set
// once per metric reader, ≈ 4 µs a request in bench row 7, so a dead collector made every request
// dearer. Here an add is a lookup by the attribute object (the SDK passes the same object for
// each drop) and an increment; the totals reach the real meter as an observable counter read at
// collection time, exported under the same name as a monotonic sum, like a counter.
import type {
  Attributes, BatchObservableCallback, Counter, Meter, MeterOptions, MeterProvider, MetricOptions, Observable, ObservableCounter,
  ObservableGauge, ObservableUpDownCounter, Gauge, Histogram, UpDownCounter,
} from '@opentelemetry/api'

export function coalesced(provider: MeterProvider): MeterProvider {
  return {
    getMeter(name: string, version?: string, options?: MeterOptions): Meter {
      return new CoalescingMeter(provider.getMeter(name, version, options))
    },
  }
}

class CoalescingMeter implements Meter {
  constructor(private readonly meter: Meter) {}

  createCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Counter<A> {
    return new CoalescedCounter<A>(this.meter.createObservableCounter<A>(name, options))
  }

  createGauge<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Gauge<A> {
    return this.meter.createGauge<A>(name, options)
  }
  createHistogram<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Histogram<A> {
    return this.meter.createHistogram<A>(name, options)
  }
  createUpDownCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): UpDownCounter<A> {
    return this.meter.createUpDownCounter<A>(name, options)
  }
  createObservableGauge<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableGauge<A> {
    return this.meter.createObservableGauge<A>(name, options)
  }
  createObservableCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableCounter<A> {
    return this.meter.createObservableCounter<A>(name, options)
  }
  createObservableUpDownCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableUpDownCounter<A> {
    return this.meter.createObservableUpDownCounter<A>(name, options)
  }
  addBatchObservableCallback<A extends Attributes = Attributes>(callback: BatchObservableCallback<A>, observables: Observable<A>[]): void {
    this.meter.addBatchObservableCallback(callback, observables)
  }
  removeBatchObservableCallback<A extends Attributes = Attributes>(callback: BatchObservableCallback<A>, observables: Observable<A>[]): void {
    this.meter.removeBatchObservableCallback(callback, observables)
  }
}

interface Total<A> {
  readonly attributes: A | undefined
  value: number
}

class CoalescedCounter<A extends Attributes> implements Counter<A> {
  /** Fast path: the attribute objects the SDK reuses. Weak, so one-off objects cost nothing. */
  private readonly byObject = new WeakMap<A, Total<A>>()
  /** Every distinct attribute set once, whatever object carried it. */
  private readonly byContent = new Map<string, Total<A>>()
  private withoutAttributes: Total<A> | undefined

  constructor(observable: ObservableCounter<A>) {
    observable.addCallback((result) => {
      if (this.withoutAttributes) result.observe(this.withoutAttributes.value)
      for (const total of this.byContent.values()) result.observe(total.value, total.attributes)
    })
  }

  add(value: number, attributes?: A): void {
    if (!(value >= 0)) return
    this.totalFor(attributes).value += value
  }

  private totalFor(attributes: A | undefined): Total<A> {
    if (!attributes) return (this.withoutAttributes ??= { attributes: undefined, value: 0 })
    let total = this.byObject.get(attributes)
    if (total) return total
    const key = JSON.stringify(Object.keys(attributes).sort().map((k) => [k, attributes[k]]))
    total = this.byContent.get(key)
    if (!total) {
      total = { attributes: { ...attributes }, value: 0 }
      this.byContent.set(key, total)
    }
    this.byObject.set(attributes, total)
    return total
  }
}

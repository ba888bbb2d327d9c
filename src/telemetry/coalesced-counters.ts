// A MeterProvider for the SDK's own bookkeeping: its counters add up in place, and it is bound to
// the real MeterProvider only once NodeSDK has built that one.
//
//   const selfObs = coalesced()
//   new BatchSpanProcessor(exporter, { selfObsMeterProvider: selfObs })   // before NodeSDK#start
//   selfObs.bind(meterProvider)                                             // after it
//
// Why: with the collector dead every dropped span is an add(), which a real counter hashes per
// reader; here it is a lookup and an increment, read at collection as a monotonic sum. Late: NodeSDK
// creates the MeterProvider after it is handed the processors. docs/telemetry.md#off-the-request-path.
import type {
  Attributes,
  BatchObservableCallback,
  Counter,
  Gauge,
  Histogram,
  Meter,
  MeterOptions,
  MeterProvider,
  MetricOptions,
  Observable,
  ObservableCallback,
  ObservableCounter,
  ObservableGauge,
  ObservableUpDownCounter,
  UpDownCounter,
} from '@opentelemetry/api'

export interface LateMeterProvider extends MeterProvider {
  bind(provider: MeterProvider): void
}

export function coalesced(): LateMeterProvider {
  const meters: CoalescingMeter[] = []
  let bound: MeterProvider | undefined
  return {
    getMeter(name: string, version?: string, options?: MeterOptions): Meter {
      const meter = new CoalescingMeter(name, version, options)
      if (bound) meter.bind(bound)
      else meters.push(meter)
      return meter
    },
    bind(provider) {
      bound = provider
      for (const m of meters.splice(0)) m.bind(provider)
    },
  }
}

type Bindable = { bind(meter: Meter): void }

class CoalescingMeter implements Meter {
  private readonly pending: Bindable[] = []
  private meter: Meter | undefined

  constructor(
    private readonly name: string,
    private readonly version?: string,
    private readonly options?: MeterOptions,
  ) {}

  bind(provider: MeterProvider): void {
    this.meter = provider.getMeter(this.name, this.version, this.options)
    for (const p of this.pending.splice(0)) p.bind(this.meter)
  }

  private later<T extends Bindable>(instrument: T): T {
    if (this.meter) instrument.bind(this.meter)
    else this.pending.push(instrument)
    return instrument
  }

  createCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Counter<A> {
    return this.later(new CoalescedCounter<A>(name, options, false))
  }
  createUpDownCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): UpDownCounter<A> {
    return this.later(new CoalescedCounter<A>(name, options, true))
  }
  createHistogram<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Histogram<A> {
    return this.later(new LateRecorder<A>((m) => m.createHistogram<A>(name, options)))
  }
  createGauge<A extends Attributes = Attributes>(name: string, options?: MetricOptions): Gauge<A> {
    return this.later(new LateRecorder<A>((m) => m.createGauge<A>(name, options)))
  }
  createObservableGauge<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableGauge<A> {
    return this.later(new LateObservable<A>((m) => m.createObservableGauge<A>(name, options)))
  }
  createObservableCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableCounter<A> {
    return this.later(new LateObservable<A>((m) => m.createObservableCounter<A>(name, options)))
  }
  createObservableUpDownCounter<A extends Attributes = Attributes>(name: string, options?: MetricOptions): ObservableUpDownCounter<A> {
    return this.later(new LateObservable<A>((m) => m.createObservableUpDownCounter<A>(name, options)))
  }
  // The SDK's bookkeeping registers no batch callbacks.
  addBatchObservableCallback<A extends Attributes = Attributes>(
    _callback: BatchObservableCallback<A>,
    _observables: Observable<A>[],
  ): void {}
  removeBatchObservableCallback<A extends Attributes = Attributes>(
    _callback: BatchObservableCallback<A>,
    _observables: Observable<A>[],
  ): void {}
}

/** A histogram or gauge: what is recorded before it is bound is dropped (nothing is). */
class LateRecorder<A extends Attributes> implements Histogram<A>, Gauge<A> {
  private real: { record(value: number, attributes?: A): void } | undefined
  constructor(private readonly create: (m: Meter) => { record(value: number, attributes?: A): void }) {}
  bind(meter: Meter): void {
    this.real = this.create(meter)
  }
  record(value: number, attributes?: A): void {
    this.real?.record(value, attributes)
  }
}

class LateObservable<A extends Attributes> implements ObservableGauge<A> {
  private readonly callbacks = new Set<ObservableCallback<A>>()
  private real: Observable<A> | undefined
  constructor(private readonly create: (m: Meter) => Observable<A>) {}
  bind(meter: Meter): void {
    this.real = this.create(meter)
    for (const cb of this.callbacks) this.real.addCallback(cb)
  }
  addCallback(callback: ObservableCallback<A>): void {
    this.callbacks.add(callback)
    this.real?.addCallback(callback)
  }
  removeCallback(callback: ObservableCallback<A>): void {
    this.callbacks.delete(callback)
    this.real?.removeCallback(callback)
  }
}

interface Total<A> {
  readonly attributes: A | undefined
  value: number
}

class CoalescedCounter<A extends Attributes> implements Counter<A>, UpDownCounter<A> {
  /** Fast path: the attribute objects the SDK reuses. Weak, so one-off objects cost nothing. */
  private readonly byObject = new WeakMap<A, Total<A>>()
  /** Every distinct attribute set once, whatever object carried it. */
  private readonly byContent = new Map<string, Total<A>>()
  private withoutAttributes: Total<A> | undefined

  constructor(
    private readonly name: string,
    private readonly options: MetricOptions | undefined,
    private readonly upDown: boolean,
  ) {}

  bind(meter: Meter): void {
    const observable = this.upDown
      ? meter.createObservableUpDownCounter<A>(this.name, this.options)
      : meter.createObservableCounter<A>(this.name, this.options)
    observable.addCallback((result) => {
      if (this.withoutAttributes) result.observe(this.withoutAttributes.value)
      for (const total of this.byContent.values()) result.observe(total.value, total.attributes)
    })
  }

  add(value: number, attributes?: A): void {
    if (!(value >= 0) && !(this.upDown && value < 0)) return
    this.totalFor(attributes).value += value
  }

  private totalFor(attributes: A | undefined): Total<A> {
    if (!attributes) return (this.withoutAttributes ??= { attributes: undefined, value: 0 })
    let total = this.byObject.get(attributes)
    if (total) return total
    const key = JSON.stringify(
      Object.keys(attributes)
        .sort()
        .map((k) => [k, attributes[k]]),
    )
    total = this.byContent.get(key)
    if (!total) {
      total = { attributes: { ...attributes }, value: 0 }
      this.byContent.set(key, total)
    }
    this.byObject.set(attributes, total)
    return total
  }
}

#[keel::service]
trait Echo {
    async fn echo<T>(&self, value: T) -> T;
}

fn main() {}

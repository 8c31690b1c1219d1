// Every problem is reported in one run, each at its own place.
#[keel::service]
trait Echo {
    fn first(&self);
    async fn second(self);
    const LIMIT: u32;
}

fn main() {}
